"""The chart's Grafana dashboard queries metrics that a real runtime exports: every `kinfer_*`
name in its queries, except the operator's (checked against a real operator scrape in the e2e),
is in the scrape of a runtime that has served two versions with a decision policy (so the drift
and decision series exist too)."""
import json
import re

import numpy as np
import requests

from conftest import ROOT

DASHBOARD = ROOT / "charts" / "kinfer-operator" / "files" / "dashboards" / "kinfer.json"
# Exported by the operator, not the runtime (tests/e2e/test_e2e.py checks them in its scrape).
OPERATOR = {"kinfer_rollbacks_total"}
POLICY = "output: score\nthresholds:\n  - {min: 0.5, label: review}\ndefault: allow\n"


def dashboard_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return {m for e in exprs for m in re.findall(r"\bkinfer_[a-z0-9_]+", e)}


def test_every_runtime_metric_of_the_dashboard_is_in_a_real_scrape(start, mlp_v1, mlp_v2, workdir):
    pol = workdir / "dash-policy.yaml"
    pol.write_text(POLICY)
    rt = start(mlp_v1, "fraud", "--policy", str(pol), version="v1")
    rows = np.random.default_rng(9).normal(size=(1100, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    requests.post(rt.url("/v2/models/fraud/infer"), json=body).raise_for_status()
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2)})[0] == 200
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[0] == 200
    requests.post(rt.url("/v2/models/fraud/infer"), json=body).raise_for_status()
    scrape = requests.get(f"http://127.0.0.1:{rt.metrics_port}/metrics").text
    exported = {line.split("{", 1)[0].split(" ", 1)[0] for line in scrape.splitlines() if line.startswith("kinfer_")}
    wanted = dashboard_metrics()
    assert len(wanted) >= 10, wanted
    missing = sorted(wanted - OPERATOR - exported)
    assert not missing, f"the dashboard queries {missing}, which a runtime does not export"
    # And the operator's names really are not the runtime's (else they belong above).
    assert not (OPERATOR & exported)
