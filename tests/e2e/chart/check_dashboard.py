"""Checks the chart's Grafana dashboard ConfigMap as rendered: one ConfigMap named *-dashboard with
the sidecar's label, in the namespace asked for, whose JSON is files/dashboards/kinfer.json with a
query on every panel. Prints the panel and query counts.

    python check_dashboard.py RENDERED.yaml CHART/files/dashboards/kinfer.json NAMESPACE
"""
import json
import sys

import yaml

rendered, source, namespace = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered))
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
assert len(docs) == 1, [d["metadata"]["name"] for d in docs]
meta = docs[0]["metadata"]
assert meta["labels"].get("grafana_dashboard") == "1" and meta["namespace"] == namespace, meta
dash = json.loads(docs[0]["data"]["kinfer.json"])
assert dash == json.load(open(source)), "the ConfigMap's JSON is not files/dashboards/kinfer.json"
exprs = [t.get("expr") for p in dash["panels"] for t in p["targets"]]
assert len(dash["panels"]) >= 9 and all(exprs), exprs
print(f"{len(dash['panels'])} panels, {len(exprs)} queries")
