"""`make demo`, after scripts/e2e-setup.sh: the main job end to end on the local cluster.

Signed sample models go to the cluster's S3; a ModelVersion and an InferenceService are applied;
requests go through the Service with tritonclient; a second version is promoted by editing one
line of a manifest and applying it (the GitOps step) and swaps in without a restart; a slower
third version is promoted and rolled back by itself, with its Event and alert."""
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import kinfer_e2e as k  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

NS = "kinfer-demo"
WORK = k.CACHE / "demo"


def say(msg):
    print(f"\n\033[1;34m==> {msg}\033[0m", flush=True)


def show(*args):
    print(f"$ kubectl {' '.join(args)}", flush=True)
    print(k.kubectl(*args, check=False), flush=True)


def status():
    s = k.kget("inferenceservice", "fraud", NS).get("status", {})
    return s


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    receiver = k.WebhookReceiver()
    say(f"alerts go to a local webhook receiver at {receiver.url} (Alertmanager JSON and Slack text)")

    say("signing three sample versions with the model_signing CLI and uploading them to S3")
    priv, pub = k.make_keys(WORK)
    uris = {}
    for v in ("v1", "v2", "v3"):
        d = k.make_artifact(WORK, v, priv)
        uris[v] = k.upload(d, f"demo/fraud/{v}")
        print(f"  fraud-{v}: {uris[v]}  ({k.VERSIONS[v]['about']})")

    if k.kubectl("get", "namespace", NS, check=False).strip():
        say(f"removing {NS} from an earlier run: kubectl delete namespace {NS}")
        k.kubectl("delete", "namespace", NS, "--wait=true", timeout=300)
    say(f"namespace {NS}: S3 credentials Secret, trusted-keys ConfigMap, ModelVersions")
    k.kubectl("create", "namespace", NS)
    k.apply(k.base_objects(NS, pub) + [k.model_version(NS, v, u) for v, u in uris.items()])
    manifest = WORK / "inferenceservice.yaml"
    manifest.write_text(yaml.safe_dump(k.inference_service(NS, "v1", replicas=2, webhook=receiver.url), sort_keys=False))
    say(f"kubectl apply -f {manifest}   (modelVersion: fraud-v1)")
    print(k.kubectl("apply", "-f", str(manifest)))
    k.wait_for("fraud-v1 serving on every pod", lambda: status().get("servingVersion") == "fraud-v1"
               and status().get("readyReplicas") == 2, timeout=300)
    show("get", "infsvc,mv", "-n", NS)

    ip = k.service_ip(NS)
    rows = np.random.default_rng(1).normal(size=(3, 8))
    for proto in ("http", "grpc"):
        probs, version = k.infer(ip, rows, proto)
        say(f"tritonclient ({proto}) through the Service {ip}: model_version={version}")
        print(np.array2string(probs, precision=4))

    say("GitOps: edit one line (modelVersion: fraud-v1 -> fraud-v2) and apply it, under live load")
    manifest.write_text(manifest.read_text().replace("modelVersion: fraud-v1", "modelVersion: fraud-v2"))
    before = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    with k.Load(ip, rate=80) as load:
        print(k.kubectl("apply", "-f", str(manifest)))
        last = None
        deadline = time.time() + 420
        while time.time() < deadline and status().get("servingVersion") != "fraud-v2":
            r = status().get("rollout", {})
            line = f"  phase={r.get('phase')} canaryPods={r.get('canaryPods')} {r.get('message', '')}"
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(0.5)
    after = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    print(f"  requests during the swap: {load.ok} ok, {load.failed} failed; answered by {load.versions}")
    print(f"  pods restarted: {'none' if before == after else after}")
    show("get", "infsvc,mv", "-n", NS)

    say("promoting fraud-v3: the same answers, 1.6x the compute (the default analysis catches it)")
    manifest.write_text(manifest.read_text().replace("modelVersion: fraud-v2", "modelVersion: fraud-v3"))
    with k.Load(ip, rate=80) as load:
        print(k.kubectl("apply", "-f", str(manifest)))
        k.wait_for("the automatic rollback", lambda: status().get("rollout", {}).get("phase") == "RolledBack", timeout=300)
    print(f"  requests during the rollout: {load.ok} ok, {load.failed} failed")
    c = k.condition(k.kget("inferenceservice", "fraud", NS), "RolledBack") or {}
    print(f"  RolledBack={c.get('status')} reason={c.get('reason')}: {c.get('message')}")
    show("get", "infsvc,mv", "-n", NS)
    show("get", "events", "-n", NS, "--field-selector", "reason=RolledBack")
    k.wait_for("the alert", lambda: receiver.received, timeout=30)
    for a in receiver.received:
        print(f"  alert to {a['path']}: {json.dumps(a['body'])[:400]}")

    say("look around")
    print(f"""  eval "$(make -s cluster-env)"
  kubectl get infsvc,mv -n {NS}
  kubectl describe infsvc fraud -n {NS}
  kubectl get pods -n {NS} -o jsonpath='{{range .items[*]}}{{.metadata.name}} {{.metadata.annotations.kinfer\\.dev/analysis}}{{"\\n"}}{{end}}'
  kubectl get events -n {NS} --sort-by=.lastTimestamp
  The cluster stays up; tear it down with: make cluster-down""")
    receiver.close()


if __name__ == "__main__":
    try:
        main()
    except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as e:
        sys.exit(f"demo failed: {e}\nlook with: eval \"$(make -s cluster-env)\"; "
                 f"kubectl describe infsvc fraud -n {NS}; kubectl get events -n {NS}")
