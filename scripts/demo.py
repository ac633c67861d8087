"""`make demo`, after scripts/e2e-setup.sh: the main job end to end on the local cluster.

Signed sample models go to the cluster's S3; the ModelVersions and the InferenceService are
committed to a git repository that Flux (source-controller + kustomize-controller, running on the
local cluster) applies; requests go through the Service with tritonclient; a second version is
promoted by committing one line and swaps in without a restart; a slower third version is
committed, rolled back by kinfer by itself (Event, alert, Flux's health check failing while git
still names it), and the previous version is committed back. Each step prints the commit and
Flux's view next to kinfer's."""
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import gitops  # noqa: E402
import kinfer_e2e as k  # noqa: E402
import numpy as np  # noqa: E402

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


MANIFEST = "models/fraud/inferenceservice.yaml"


def commit(repo, version, receiver, message):
    sha = repo.commit({MANIFEST: gitops.yaml_docs([k.inference_service(NS, version, replicas=2, webhook=receiver.url)])},
                      message)
    print(f"$ git commit -m '{message}' && git push   -> {sha[:12]}", flush=True)
    print("  " + gitops.git(repo.dir, "show", "--format=", "-U0", "HEAD").replace("\n", "\n  "), flush=True)
    gitops.reconcile(NS, "models")
    return sha


def views():
    """kinfer's, kstatus's and Flux's view in one line each."""
    out = k.kubectl("get", "inferenceservice", "fraud", "-n", NS, "-o", "json", "--ignore-not-found")
    if not out.strip():
        return f"  kinfer: InferenceService fraud not applied yet\n  flux:   {gitops.flux_view(NS, 'models')}"
    obj = json.loads(out)
    r = obj.get("status", {}).get("rollout", {})
    ks = gitops.kstatus(obj)[0]
    return (f"  kinfer: phase={r.get('phase')} serving={obj.get('status', {}).get('servingVersion')} "
            f"{r.get('message', '')[:160]}\n  kstatus: {ks['status']}\n  flux:   {gitops.flux_view(NS, 'models')}")


def follow(until, timeout):
    """Prints the views whenever they change, until until() or the timeout."""
    last, deadline = None, time.time() + timeout
    while time.time() < deadline:
        v = views()
        if v != last:
            print(v, flush=True)
            last = v
        try:
            done = until()
        except RuntimeError:  # not applied by Flux yet
            done = False
        if done:
            return
        time.sleep(1)
    raise TimeoutError("the step did not finish in time")


def flux_ready_at(sha):
    ks = gitops.kustomization(NS, "models")
    c = k.condition(ks, "Ready") or {}
    return c.get("status") == "True" and sha in ks.get("status", {}).get("lastAppliedRevision", "")


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
    say(f"namespace {NS}: S3 credentials Secret and trusted-keys ConfigMap (not in git)")
    k.kubectl("create", "namespace", NS)
    k.apply(k.base_objects(NS, pub))
    say("git: the ModelVersions and the InferenceService (modelVersion: fraud-v1) in a repository Flux reconciles")
    repo = gitops.Repo(NS, WORK)
    sha = repo.commit({"models/fraud/modelversions.yaml": gitops.yaml_docs([k.model_version(NS, v, u) for v, u in uris.items()]),
                       MANIFEST: gitops.yaml_docs([k.inference_service(NS, "v1", replicas=2, webhook=receiver.url)])},
                      "fraud: three ModelVersions, serving fraud-v1")
    print(f"  {repo.url}\n" + "  " + repo.log().replace("\n", "\n  "))
    k.apply(gitops.flux_objects(NS, "models", repo, "./models/fraud"))
    show("get", "gitrepositories,kustomizations", "-n", NS)
    follow(lambda: flux_ready_at(sha) and status().get("servingVersion") == "fraud-v1" and status().get("readyReplicas") == 2,
           timeout=420)
    show("get", "infsvc,mv", "-n", NS)

    ip = k.service_ip(NS)
    rows = np.random.default_rng(1).normal(size=(3, 8))
    for proto in ("http", "grpc"):
        probs, version = k.infer(ip, rows, proto)
        say(f"tritonclient ({proto}) through the Service {ip}: model_version={version}")
        print(np.array2string(probs, precision=4))

    say("GitOps: commit one line (modelVersion: fraud-v1 -> fraud-v2); Flux applies it, under live load")
    before = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    with k.Load(ip, rate=80) as load:
        sha = commit(repo, "v2", receiver, "fraud: promote fraud-v2")
        follow(lambda: status().get("servingVersion") == "fraud-v2" and flux_ready_at(sha), timeout=480)
    after = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    print(f"  requests during the swap: {load.ok} ok, {load.failed} failed; answered by {load.versions}")
    print(f"  pods restarted: {'none' if before == after else after}")
    show("get", "infsvc,mv", "-n", NS)

    say("committing fraud-v3: the same answers, 1.6x the compute (the default analysis catches it)")
    with k.Load(ip, rate=80) as load:
        sha = commit(repo, "v3", receiver, "fraud: promote fraud-v3")
        follow(lambda: status().get("rollout", {}).get("phase") == "RolledBack"
               and (k.condition(gitops.kustomization(NS, "models"), "Ready") or {}).get("reason") == "HealthCheckFailed",
               timeout=420)
    print(f"  requests during the rollout: {load.ok} ok, {load.failed} failed")
    c = k.condition(k.kget("inferenceservice", "fraud", NS), "RolledBack") or {}
    print(f"  RolledBack={c.get('status')} reason={c.get('reason')}: {c.get('message')}")
    print(f"  git still says: {[line.strip() for line in (repo.dir / MANIFEST).read_text().splitlines() if 'modelVersion' in line]}")
    show("get", "infsvc,mv", "-n", NS)
    show("get", "events", "-n", NS, "--field-selector", "reason=RolledBack")
    k.wait_for("the alert", lambda: receiver.received, timeout=30)
    for a in receiver.received:
        print(f"  alert to {a['path']}: {json.dumps(a['body'])[:400]}")

    say("commit fraud-v2 back: the hold ends and Flux is Ready again")
    sha = commit(repo, "v2", receiver, "fraud: back to fraud-v2")
    follow(lambda: flux_ready_at(sha), timeout=180)
    print("  " + repo.log().replace("\n", "\n  "))

    say("look around")
    print(f"""  eval "$(make -s cluster-env)"
  kubectl get infsvc,mv,gitrepositories,kustomizations -n {NS}
  git clone {repo.url}   (commit there; Flux applies at its interval)
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
