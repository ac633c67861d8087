"""What the cluster looked like when an e2e test failed, in the test's failure report.

CI keeps only the run's output (the cluster goes down after the tier), so a failure that is not
reproduced at once is understood from this section or not at all: every InferenceService's status,
each of its pods' contract annotations and readiness, the namespace's latest Events and the last
lines of each model-watcher and of the operator. Best effort: a cluster that no longer answers
gives what it can, and nothing here can fail the run or change its outcome.
"""
import json
import subprocess

import pytest

import kinfer_e2e as k

LOG_LINES = 15
EVENTS = 12
WIDTH = 400


def _kubectl(*args):
    try:
        p = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=k.env(), timeout=20)
        return p.stdout if p.returncode == 0 else f"(kubectl {' '.join(args)}: {p.stderr.strip()[-200:]})"
    except Exception as e:  # noqa: BLE001 - a diagnostic never raises
        return f"(kubectl {' '.join(args)}: {e})"


def _json(*args):
    try:
        return json.loads(_kubectl(*args, "-o", "json")).get("items", [])
    except ValueError:
        return []


def _clip(text):
    return text if len(text) <= WIDTH else text[:WIDTH] + "…"


def _tail(text):
    return [_clip(line) for line in text.strip().splitlines()[-LOG_LINES:]]


def cluster_state():
    out = []
    for ns in sorted({s["metadata"]["namespace"] for s in _json("get", "infsvc", "-A")}):
        for s in _json("get", "infsvc", "-n", ns):
            st = s.get("status", {})
            keep = {key: st.get(key) for key in ("servingVersion", "targetVersion", "rejectedVersion")}
            keep["rollout"] = st.get("rollout")
            keep["conditions"] = [(c["type"], c["status"], c.get("reason")) for c in st.get("conditions", [])]
            out.append(f"infsvc {ns}/{s['metadata']['name']} spec {s['spec'].get('modelVersion')}: "
                       + _clip(json.dumps(keep)))
        for p in _json("get", "pods", "-n", ns, "-l", "kinfer.dev/inferenceservice"):
            a = p["metadata"].get("annotations", {})
            ready = (k.condition(p, "Ready") or {}).get("status")
            out.append(f"pod {p['metadata']['name']} ready={ready} restarts={k.restarts(p)} "
                       f"target={a.get('kinfer.dev/target-version')} serving={a.get('kinfer.dev/serving-version')}")
            out.append("  analysis " + _clip(a.get("kinfer.dev/analysis", "-")))
            out += ["  watcher| " + line
                    for line in _tail(_kubectl("logs", "-n", ns, p["metadata"]["name"], "-c", "watcher",
                                               f"--tail={LOG_LINES}"))]
        events = sorted(_json("get", "events", "-n", ns),
                        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")[-EVENTS:]
        out += [f"event {e.get('lastTimestamp') or e.get('eventTime')} {e.get('type')} {e.get('reason')} "
                f"{e['involvedObject'].get('name')}: " + _clip(e.get("message", "")) for e in events]
    out += ["operator| " + line for line in _tail(_kubectl(
        "logs", "-n", "kinfer-system", "-l", "app.kubernetes.io/name=kinfer-operator", f"--tail={LOG_LINES}",
        "--prefix=false", "--max-log-requests=4"))]
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        try:
            rep.sections.append(("the cluster at the failure", cluster_state()))
        except Exception as e:  # noqa: BLE001 - a diagnostic never changes the outcome
            rep.sections.append(("the cluster at the failure", f"(not read: {e})"))
