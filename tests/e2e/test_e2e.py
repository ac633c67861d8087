"""The end-to-end story on the local cluster (tests/e2e/cluster), with the chart installed by
`helm install`: what a user does with kubectl and what they would check, and the answers served
through the Service by tritonclient. The steps build on each other, so they run in file order
within one namespace (pytest runs tests in definition order)."""
import json
import pathlib
import os
import random
import string
import subprocess
import time

import numpy as np
import onnxruntime as ort
import pytest

import gitops
import kinfer_e2e as k

ROOT = k.ROOT
NS = "kinfer-e2e-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
SYSTEM_NS = "kinfer-system"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def installed():
    """Cluster up, images imported, chart installed (scripts/e2e-setup.sh does all three)."""
    subprocess.run(["bash", str(ROOT / "scripts" / "e2e-setup.sh"), *k.CHART_VALUES], check=True, env=k.env(),
                   timeout=1800)
    yield
    if os.environ.get("KINFER_KEEP_E2E") != "1":
        k.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        k.kubectl("delete", "modeltrustpolicy", f"{NS}-release", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def receiver():
    r = k.WebhookReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def monitoring(installed, receiver):
    """Prometheus and Alertmanager on the cluster (tests/e2e/cluster/monitoring.sh), configured as
    the chart's ServiceMonitor, PodMonitor and PrometheusRule would have them, every alert routed
    to the receiver's /alertmanager path."""
    script = str(ROOT / "tests" / "e2e" / "cluster" / "monitoring.sh")
    subprocess.run(["bash", script, "up", receiver.url + "/alertmanager"], check=True, env=k.env(), timeout=1200)
    yield
    if os.environ.get("KINFER_KEEP_E2E") != "1":
        subprocess.run(["bash", script, "down"], check=False, env=k.env(), timeout=60)


@pytest.fixture(scope="module")
def health():
    """kstatus's and Argo CD's verdicts on the live InferenceServices and ModelVersions, sampled
    from the first step to test_4c, which checks them."""
    log = gitops.HealthLog(NS)
    yield log
    log.stop()


@pytest.fixture(scope="module")
def repo(work):
    """The git repository Flux reconciles this namespace's InferenceService from."""
    return gitops.Repo(NS, work)


FLUX = "models"  # the GitRepository and the Kustomization
MANIFEST = "models/fraud/inferenceservice.yaml"


def commit_isvc(repo, version, receiver, reconcile=True, **extra):
    """The GitOps step: one line of one manifest changes, committed and pushed; Flux is asked to
    reconcile now (`flux reconcile kustomization models --with-source`) instead of at its interval."""
    sha = repo.commit({MANIFEST: gitops.yaml_docs([k.inference_service(NS, version, webhook=receiver.url, **extra)])},
                      f"fraud: modelVersion: fraud-{version}")
    if reconcile:
        gitops.reconcile(NS, FLUX)
    return sha


def flux_ready_at(sha):
    ks = gitops.kustomization(NS, FLUX)
    c = k.condition(ks, "Ready") or {}
    return ks if c.get("status") == "True" and sha in ks.get("status", {}).get("lastAppliedRevision", "") else None


@pytest.fixture(scope="module")
def artifacts(work):
    priv, pub = k.make_keys(work)
    uris = {}
    for v in k.VERSIONS:
        d = k.make_artifact(work, v, priv)
        uris[v] = k.upload(d, f"e2e/{NS}/{v}")
    return pub, uris


def trust_policy(pub):  # noqa: N802 - a constant object, built from the test key
    return {"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelTrustPolicy", "metadata": {"name": f"{NS}-release"},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                     "publicKeys": [{"name": "release", "pem": pathlib.Path(pub).read_text()}]}}


def isvc():
    return k.kget("inferenceservice", "fraud", NS)


def serving_annotations():
    return sorted(p["metadata"].get("annotations", {}).get("kinfer.dev/serving-version", "") for p in k.pods(NS))


def ready_pods():
    out = []
    for p in k.pods(NS):
        c = k.condition(p, "Ready")
        if c and c["status"] == "True" and not p["metadata"].get("deletionTimestamp"):
            out.append(p)
    return out


def local_reference(work, rows):
    s = ort.InferenceSession(str(work / "artifacts" / "v1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.asarray(rows, np.float32)})[0]


def apply_isvc(version, receiver, **extra):
    k.apply([k.inference_service(NS, version, webhook=receiver.url, **extra)])


def test_1_serves_v1_on_three_ready_pods(installed, monitoring, artifacts, receiver, work, health):
    pub, uris = artifacts
    k.kubectl("create", "namespace", NS)
    # The cluster's trust for this namespace: the release key only, never unsigned. The
    # ModelVersions name a ConfigMap holding that key (a narrowing the policy allows); their
    # verification Jobs get the policy's keys on the command line, the pods from status.trust.
    k.apply([trust_policy(pub)] + k.base_objects(NS, pub) + [k.model_version(NS, v, u) for v, u in uris.items()])
    apply_isvc("v1", receiver)
    k.wait_for("3 ready pods serving fraud-v1", lambda: len(ready_pods()) == 3
               and serving_annotations() == ["fraud-v1"] * 3, timeout=300)
    pod = k.pods(NS)[0]
    assert {"conditionType": "kinfer.dev/ModelReady"} in pod["spec"]["readinessGates"]
    assert k.condition(pod, "kinfer.dev/ModelReady")["status"] == "True"
    # API credentials only where they are used: the watcher has the token, the runtime (which
    # parses untrusted requests) has none, seen from inside each container.
    token = "var/run/secrets/kubernetes.io/serviceaccount/token"
    assert (k.container_root(pod, "watcher") / token).is_file()
    assert not (k.container_root(pod, "runtime") / token).exists()
    # The watcher's account reads the Secret and ConfigMap its ModelVersions name, nothing else.
    sa = f"system:serviceaccount:{NS}:fraud-watcher"
    def can(verb, what, ns=NS):
        return k.kubectl("auth", "can-i", verb, what, "-n", ns, "--as", sa, check=False).strip()
    assert can("get", "secret/s3-credentials") == "yes"
    assert can("get", "configmap/model-signing-keys") == "yes"
    assert can("get", "secret/any-other") == "no"
    assert can("list", "secrets") == "no"
    assert can("get", "secret/s3-credentials", ns=SYSTEM_NS) == "no"
    # A watcher token bound to one pod may change that pod and no other (the chart's
    # ValidatingAdmissionPolicy; RBAC alone allows every pod of the namespace).
    own, sibling = [p["metadata"]["name"] for p in k.pods(NS)][:2]
    token = k.kubectl("create", "token", "fraud-watcher", "-n", NS, "--bound-object-kind", "Pod",
                      "--bound-object-name", own, "--duration", "10m").strip()
    cfg = json.loads(k.kubectl("config", "view", "--raw", "-o", "json"))
    cluster = cfg["clusters"][0]["cluster"]
    as_watcher = work / "watcher.kubeconfig"
    as_watcher.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "w",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "w", "user": {"token": token}}],
        "contexts": [{"name": "w", "context": {"cluster": "c", "user": "w", "namespace": NS}}]}))
    def as_the_watcher(*args):
        return subprocess.run(["kubectl", "--kubeconfig", str(as_watcher), *args], capture_output=True, text=True,
                              env=k.env())
    r = as_the_watcher("annotate", "pod", sibling, "kinfer.dev/analysis={}", "--overwrite")
    assert r.returncode != 0 and "only the pod its token is bound to" in r.stderr, (r.returncode, r.stderr)
    # On its own pod, only the two annotations the pod contract gives it and its condition (the
    # real watcher writes exactly those throughout this run: every pod's readiness depends on it).
    for change in ("e2e/probe=1", "kinfer.dev/target-version=fraud-v3"):
        r = as_the_watcher("annotate", "pod", own, change, "--overwrite")
        assert r.returncode != 0 and "only the annotations kinfer.dev/serving-version" in r.stderr, (change, r.stderr)
    r = as_the_watcher("label", "pod", own, "kinfer.dev/inferenceservice=other", "--overwrite")
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr
    # The status patch goes straight to the API (kubectl would first GET pods/status, which the
    # watcher's Role does not grant; the watcher itself only patches).
    import base64, ssl, tempfile, urllib.error, urllib.request
    with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as ca:
        ca.write(base64.b64decode(cluster["certificate-authority-data"]))
    req = urllib.request.Request(
        f"{cluster['server']}/api/v1/namespaces/{NS}/pods/{own}/status", method="PATCH",
        data=json.dumps({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/strategic-merge-patch+json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca.name), timeout=30)
    body = refused.value.read().decode()
    assert refused.value.code == 403 and "only the kinfer.dev/ModelReady and kinfer.dev/CpuPinned" in body, body
    svc = k.wait_for("status.servingVersion", lambda: isvc() if isvc().get("status", {}).get("servingVersion") == "fraud-v1" else None)
    assert k.condition(svc, "Ready")["status"] == "True"
    mv = k.kget("modelversion", "fraud-v1", NS)
    assert k.condition(mv, "Verified")["status"] == "True" and mv["status"]["digest"].startswith("sha256:")
    assert mv["status"]["trust"]["policies"] == [f"{NS}-release"], mv["status"]
    job = k.kget("job", "fraud-v1-verify", NS)
    assert any(a.startswith("release=-----BEGIN PUBLIC KEY-----")
               for a in job["spec"]["template"]["spec"]["initContainers"][0]["args"])
    rows = np.random.default_rng(9).normal(size=(5, 8))
    want = local_reference(work, rows)
    ip = k.service_ip(NS)
    for proto in ("http", "grpc"):
        got, version = k.infer(ip, rows, proto)
        assert version == "fraud-v1"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_2_gitops_promotion_is_canary_first_without_failures_or_restarts(receiver, repo):
    # Git takes over: the manifest test_1 applied is committed, Flux's kustomize-controller applies
    # it (no change) and its health check (kstatus) finds the service Current.
    sha = commit_isvc(repo, "v1", receiver, reconcile=False)
    k.apply(gitops.flux_objects(NS, FLUX, repo, "./models/fraud"))
    k.wait_for("the Kustomization Ready at the first commit", lambda: flux_ready_at(sha), timeout=180)
    before = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    with k.Load(k.service_ip(NS), rate=100) as load:
        time.sleep(3)
        sha = commit_isvc(repo, "v2", receiver)
        # Canary first: one pod is asked for v2 while the others still serve v1.
        def canary():
            s = isvc().get("status", {})
            targets = [p["metadata"].get("annotations", {}).get("kinfer.dev/target-version") for p in k.pods(NS)]
            if s.get("rollout", {}).get("phase") == "Canary" and targets.count("fraud-v2") == 1:
                return s
        s = k.wait_for("the canary phase with one pod", canary, timeout=120, interval=0.3)
        assert len(s["rollout"]["canaryPods"]) == 1
        # Flux applied the commit and waits on kinfer's health: the Kustomization is not Ready yet.
        ks = gitops.kustomization(NS, FLUX)
        assert (k.condition(ks, "Ready") or {}).get("status") != "True" or sha not in ks["status"].get("lastAppliedRevision", ""), ks["status"]
        # Two analyses with the default settings (the canary's, then the other pods'), each
        # ~75 s at this load. The waits a user scripts (docs/gitops.md):
        k.kubectl("wait", "-n", NS, "--for=jsonpath={.status.servingVersion}=fraud-v2", "infsvc/fraud", "--timeout=420s",
                  timeout=430)
        k.kubectl("wait", "-n", NS, "--for=condition=Ready", "infsvc/fraud", "--timeout=120s", timeout=130)
        k.wait_for("every pod serving fraud-v2", lambda: serving_annotations() == ["fraud-v2"] * 3, timeout=60)
        time.sleep(2)
    assert load.failed == 0, load.errors[:5]
    assert load.versions.get("fraud-v2", 0) > 0
    after = {p["metadata"]["name"]: k.restarts(p) for p in k.pods(NS)}
    assert after == before, "no pod was replaced and no container restarted"
    assert k.condition(isvc(), "Ready")["status"] == "True"
    # Flux's view: the commit is applied and healthy.
    k.wait_for("the Kustomization Ready at the fraud-v2 commit", lambda: flux_ready_at(sha), timeout=120)


def rolled_back_to(version, bad, receiver, reason, repo=None, **extra):
    with k.Load(k.service_ip(NS), rate=100) as load:
        time.sleep(2)
        if repo:
            commit_isvc(repo, bad, receiver, **extra)
        else:
            apply_isvc(bad, receiver, **extra)
        svc = k.wait_for(f"fraud-{bad} rolled back", lambda: isvc() if (isvc().get("status", {}).get("rejectedVersion") == f"fraud-{bad}"
                         and isvc()["status"].get("rollout", {}).get("phase") == "RolledBack") else None, timeout=300)
    assert load.failed == 0, load.errors[:5]
    st = svc["status"]
    assert st["servingVersion"] == f"fraud-{version}" and svc["spec"]["modelVersion"] == f"fraud-{bad}"
    c = k.condition(svc, "RolledBack")
    assert c["status"] == "True" and reason in (c["reason"] + c["message"]), c
    return svc, c


def test_3_slow_version_is_rolled_back_with_event_and_alert(receiver, repo, monitoring):
    """A version with 1.6× the compute (1.2–1.5× the request latency), at the default analysis
    settings: the canary's previous
    version answers half of its requests during the analysis, and the verdict is the interval of
    the latency ratio over the same moments, in the condition with its figures."""
    before = len(receiver.received)
    svc, c = rolled_back_to("v2", "v3", receiver, "LatencyRegression", repo=repo)
    assert "× the baseline's" in c["message"] and "at 95% confidence" in c["message"], c
    assert k.wait_for("a RolledBack Warning Event", lambda: [e for e in k.events(NS, "RolledBack") if e["type"] == "Warning"])
    alerts = k.wait_for("the webhook alert", lambda: [r for r in receiver.received if "fraud-v3" in json.dumps(r["body"])], timeout=60)
    am = [a for a in alerts if not a["path"].endswith("/slack")]
    assert am and isinstance(am[0]["body"], list) and am[0]["body"][0]["labels"]["alertname"]
    assert [a for a in alerts if a["path"].endswith("/slack")][0]["body"]["text"]
    # The same rollback through the monitoring stack users run: Prometheus, scraping the operator as
    # the chart's ServiceMonitor has it, fires the chart's KinferRollbackHappened rule, and the
    # Alertmanager's route delivers it to the webhook.
    def from_alertmanager():
        return [a for r in receiver.received[before:] if r["path"] == "/alertmanager" and isinstance(r["body"], dict)
                for a in r["body"].get("alerts", [])
                if a["labels"].get("alertname") == "KinferRollbackHappened" and a["status"] == "firing"]
    fired = k.wait_for("KinferRollbackHappened through Prometheus and Alertmanager", from_alertmanager, timeout=120)
    assert fired[0]["labels"]["severity"] == "warning", fired[0]
    assert "automatic rollback(s) in the last 15m" in fired[0]["annotations"]["description"], fired[0]
    # Prometheus scrapes every serving pod as the chart's PodMonitor has it, with the version label.
    # Each pod twice: the runtime (9090) and the model-watcher (9091).
    up = k.prom_query(f'up{{job="kinfer",namespace="{NS}"}} == 1')
    ports = sorted(x["metric"]["instance"].rsplit(":", 1)[1] for x in up)
    assert ports == ["9090"] * 3 + ["9091"] * 3, up
    assert {x["metric"]["kinfer_dev_inferenceservice"] for x in up} == {"fraud"}, up
    assert {x["metric"].get("kinfer_dev_model") for x in up} == {"fraud"}, up  # the pods' kinfer.dev/model
    # (over the last 15 minutes: the canary unloaded fraud-v3, so its series is stale now)
    served = k.prom_query(f'sum by (version) (max_over_time(kinfer_requests_total{{namespace="{NS}",code="200"}}[15m]))')
    assert {"fraud-v2", "fraud-v3"} <= {x["metric"].get("version", "") for x in served}, served
    assert serving_annotations() == ["fraud-v2"] * 3
    # The canary pod's own report still explains the rollback (sent back to fraud-v2, which it
    # serves, the watcher does not overwrite it).
    canary = [r for r in map(k.analysis, k.pods(NS)) if r and r["version"] == "fraud-v3"]
    assert len(canary) == 1 and canary[0]["verdict"] == "RolledBack" and canary[0]["reason"] == "LatencyRegression", canary
    f = canary[0]["figures"]
    assert canary[0]["previousVersion"] == "fraud-v2" and f["requests"] >= 100 and f["baselineRequests"] >= 100, f
    assert 1.15 < f["latencyRatioLow"] and f["latencyRatio"] < 3.0, f
    # The GitOps hold: git and the spec still say v3; Flux reports the failure through kstatus
    # (Stalled) and does not fight kinfer, and nothing retries v3: over two of Flux's retries
    # (retryInterval 15 s) its re-apply changes nothing and no pod is asked for v3 again.
    ks = k.wait_for("the Kustomization's health check failing", lambda: (lambda x: x if (k.condition(x, "Ready") or {})
                    .get("reason") == "HealthCheckFailed" else None)(gitops.kustomization(NS, FLUX)), timeout=120)
    ready = k.condition(ks, "Ready")
    assert ready["status"] == "False" and "InferenceService" in ready["message"] and "fraud" in ready["message"], ready
    assert "  modelVersion: fraud-v3\n" in (repo.dir / MANIFEST).read_text()
    generation = isvc()["metadata"]["generation"]
    time.sleep(35)
    targets = {p["metadata"].get("annotations", {}).get("kinfer.dev/target-version") for p in k.pods(NS)}
    now = isvc()
    assert "fraud-v3" not in targets and now["status"]["servingVersion"] == "fraud-v2"
    assert now["metadata"]["generation"] == generation and now["spec"]["modelVersion"] == "fraud-v3"
    assert now["status"]["rejectedVersion"] == "fraud-v3" and now["status"]["rollout"]["phase"] == "RolledBack"
    assert gitops.kstatus(now)[0]["status"] == "Failed"
    # Commit the previous version back: nothing to roll out, the hold ends, Flux is Ready again.
    sha = commit_isvc(repo, "v2", receiver)
    k.wait_for("the Kustomization Ready at the revert", lambda: flux_ready_at(sha), timeout=180)
    now = isvc()
    assert k.condition(now, "RolledBack")["status"] == "False" and not now["status"].get("rejectedVersion"), now["status"]
    assert gitops.kstatus(now)[0]["status"] == "Current"
    # The later steps apply manifests directly (kubectl): Flux is suspended (`flux suspend`).
    k.kubectl("patch", "-n", NS, "kustomizations.kustomize.toolkit.fluxcd.io", FLUX, "--type=merge",
              "-p", '{"spec":{"suspend":true}}')


def test_4_drift_tamper_and_golden_mismatch_are_refused(receiver, work):
    # With a drift rule (the default analysis has none): the decisions of the pairs differ.
    rolled_back_to("v2", "v4", receiver, "DriftDetected", analysis={"drift": k.DRIFT})
    for bad, cond in (("v5", "Verified"), ("v6", "Validated")):
        apply_isvc(bad, receiver)
        mv = k.wait_for(f"fraud-{bad} rejected", lambda: k.kget("modelversion", f"fraud-{bad}", NS)
                        if (k.condition(k.kget("modelversion", f"fraud-{bad}", NS), cond) or {}).get("status") == "False" else None)
        assert k.condition(mv, cond)["reason"] in ("SignatureInvalid", "NumericalMismatch")
        # A refusal is final: the Job failed on its first pod (podFailurePolicy), no retries.
        job = k.wait_for(f"the fraud-{bad} Job failed", lambda: (lambda j: j if k.condition(j, "Failed") else None)(
            k.kget("job", f"fraud-{bad}-verify", NS)))
        assert k.condition(job, "Failed")["reason"] == "PodFailurePolicy" and job["status"].get("failed") == 1, job["status"]
        k.wait_for(f"the service refusing fraud-{bad}", lambda: isvc()["status"].get("rejectedVersion") == f"fraud-{bad}", timeout=120)
        assert serving_annotations() == ["fraud-v2"] * 3, f"no pod ever serves fraud-{bad}"
    # Unsigned is not the ModelVersion author's choice here: the policy refuses it, before any Job.
    unsigned = k.model_version(NS, "unsigned", k.upload(work / "artifacts" / "v2", f"e2e/{NS}/unsigned"))
    unsigned["spec"]["signature"] = {"required": False}
    k.apply([unsigned])
    mv = k.wait_for("fraud-unsigned refused", lambda: (lambda m: m if k.condition(m, "Verified") else None)(
        k.kget("modelversion", "fraud-unsigned", NS)))
    c = k.condition(mv, "Verified")
    assert (c["status"], c["reason"]) == ("False", "TrustPolicyViolation") and f"ModelTrustPolicy {NS}-release" in c["message"], c
    assert not k.kubectl("get", "job", "fraud-unsigned-verify", "-n", NS, "--ignore-not-found", check=False).strip()


def test_4b_an_artifact_swapped_after_verification_is_refused(receiver, work):
    """Digest pinning: fraud-pin is verified with v2's bytes; then someone who can write the bucket
    puts v1's artifact (validly signed by the same key) under its prefix. The canary fetches the
    new bytes, sees a digest other than the one the verification Job recorded and refuses them
    (ArtifactChanged); no pod ever serves them."""
    uri = k.upload(work / "artifacts" / "v2", f"e2e/{NS}/pin")
    k.apply([k.model_version(NS, "pin", uri)])
    mv = k.wait_for("fraud-pin verified", lambda: (lambda m: m if (k.condition(m, "Validated") or {}).get("status") == "True"
                                                   else None)(k.kget("modelversion", "fraud-pin", NS)), timeout=180)
    recorded = mv["status"]["digest"]
    k.upload(work / "artifacts" / "v1", f"e2e/{NS}/pin")
    apply_isvc("pin", receiver)
    k.wait_for("the service refusing fraud-pin", lambda: isvc()["status"].get("rejectedVersion") == "fraud-pin", timeout=180)
    # The pod's report says why (one CI run read it, right after the service's refusal, without
    # its verdict: the verdict is asserted on the report the pod settles on).
    canary = k.wait_for("the canary's ArtifactChanged report", lambda: [
        r for r in map(k.analysis, k.pods(NS))
        if r and r["version"] == "fraud-pin" and r.get("verdict") == "Refused" and r.get("reason") == "ArtifactChanged"],
        timeout=60)
    assert len(canary) == 1, canary
    assert recorded in canary[0]["message"] and canary[0]["digest"] != recorded, canary
    assert k.wait_for("an ArtifactChanged Warning Event", lambda: [e for e in k.events(NS, "ArtifactChanged")
                                                                   if e["type"] == "Warning"])
    assert serving_annotations() == ["fraud-v2"] * 3, "no pod ever serves the swapped bytes"


def test_4c_kstatus_and_argo_cd_read_every_phase_as_documented(health, receiver, work):
    """Every sample of the live InferenceServices and ModelVersions since the first step, read by
    cli-utils' kstatus and by Argo CD's health code with docs/gitops/argocd-health.lua, says what
    docs/gitops.md says it does; every phase of the story was seen."""
    # Verification in flight while the service waits on it: a new ModelVersion and the spec
    # naming it at once (the rollout waits in Verifying); then back to what serves (cancelled).
    late = k.model_version(NS, "late", k.upload(work / "artifacts" / "v2", f"e2e/{NS}/late"))
    k.apply([late])
    apply_isvc("late", receiver)
    k.wait_for("a sample of the service in Verifying", lambda: any(
        s["kind"] == "InferenceService" and s["name"] == "fraud" and s["phase"] == "Verifying" for s in health.samples),
        timeout=120, interval=0.5)
    k.wait_for("fraud-late verified", lambda: (k.condition(k.kget("modelversion", "fraud-late", NS), "Ready") or {})
               .get("status") == "True", timeout=120)
    apply_isvc("v2", receiver)
    state = {}

    def cancelled():
        state.update(status=isvc()["status"], pods=serving_annotations())
        return state["status"].get("rollout", {}).get("phase") == "Idle" and state["pods"] == ["fraud-v2"] * 3
    try:
        k.wait_for("the rollout of fraud-late cancelled", cancelled, timeout=120)
    except TimeoutError as e:
        raise AssertionError(f"{e}; the service: {json.dumps(state)[:3000]}") from e
    time.sleep(2)
    health.stop()
    assert not health.errors, health.errors[:5]
    wrong = [s for s in health.samples if s["kstatus"] != s["expected"] or s["argocd"] != gitops.ARGOCD_FOR[s["kstatus"]]]
    assert not wrong, wrong[:5]
    seen = {(s["kind"], s["phase"], s["kstatus"], s["argocd"]) for s in health.samples if s["name"].startswith("fraud")}
    print("seen:", *sorted(seen, key=str), sep="\n  ")
    for phase in ("Verifying", "Canary", "Promoting"):
        assert ("InferenceService", phase, "InProgress", "Progressing") in seen, (phase, seen)
    assert ("InferenceService", "Idle", "Current", "Healthy") in seen, seen
    assert ("InferenceService", "RolledBack", "Failed", "Degraded") in seen, seen
    for verdict in (("InProgress", "Progressing"), ("Current", "Healthy"), ("Failed", "Degraded")):
        assert ("ModelVersion", None, *verdict) in seen, (verdict, seen)
    # Flux and Argo CD show kinfer's reason: the regression for the held rollback.
    held = [s for s in health.samples if s["kind"] == "InferenceService" and s["kstatus"] == "Failed"]
    assert any("LatencyRegression" in s["argocdMessage"] for s in held), held[:3]


def test_5_runtime_restart_and_operator_failover(receiver):
    apply_isvc("v2", receiver)  # back to a version that serves
    pod = k.pods(NS)[0]
    name = pod["metadata"]["name"]
    runtime = [c for c in pod["status"]["containerStatuses"] if c["name"] == "runtime"][0]
    cid = runtime["containerID"].split("://", 1)[1]
    subprocess.run(["ctr", "--address", str(k.CLUSTER / "run/containerd/containerd.sock"), "-n", "k8s.io",
                    "tasks", "kill", "-s", "SIGKILL", cid], check=True)
    k.wait_for("the runtime restarted and serving again", lambda: (lambda p: k.restarts(p)["runtime"] >= runtime["restartCount"] + 1
               and k.condition(p, "Ready")["status"] == "True")(k.kget("pod", name, NS)), timeout=180)
    ip = k.kget("pod", name, NS)["status"]["podIP"]
    _, version = k.infer(ip, np.zeros((1, 8)), "http")
    assert version == "fraud-v2"
    # SIGKILL of the watcher: it restarts, finds fraud-v2 serving and makes the pod Ready again
    # (it used to leave kinfer.dev/ModelReady False for good).
    pod = k.kget("pod", name, NS)
    watcher = [c for c in pod["status"]["containerStatuses"] if c["name"] == "watcher"][0]
    subprocess.run(["ctr", "--address", str(k.CLUSTER / "run/containerd/containerd.sock"), "-n", "k8s.io",
                    "tasks", "kill", "-s", "SIGKILL", watcher["containerID"].split("://", 1)[1]], check=True)
    k.wait_for("the watcher restarted and the pod Ready again", lambda: (lambda p: k.restarts(p)["watcher"] >= watcher["restartCount"] + 1
               and k.condition(p, "kinfer.dev/ModelReady")["status"] == "True"
               and k.condition(p, "Ready")["status"] == "True")(k.kget("pod", name, NS)), timeout=180)
    # Operator failover during a rollout.
    lease = k.kget("lease", "kinfer-operator", SYSTEM_NS)
    # The holder identity is "<pod name>_<random suffix>" (crates/operator/src/leader.rs).
    leader = lease["spec"]["holderIdentity"].split("_", 1)[0]
    with k.Load(k.service_ip(NS), rate=100) as load:
        apply_isvc("v7", receiver)
        k.wait_for("the rollout under way", lambda: isvc()["status"].get("rollout", {}).get("phase") in ("Canary", "Promoting"), interval=0.3)
        k.kubectl("delete", "pod", "-n", SYSTEM_NS, leader, "--wait=false")
        k.wait_for("the new leader finishing the rollout", lambda: isvc()["status"].get("servingVersion") == "fraud-v7", timeout=480)
    assert load.failed == 0, load.errors[:5]
    assert not k.kget("lease", "kinfer-operator", SYSTEM_NS)["spec"]["holderIdentity"].startswith(leader + "_")


def test_6_gpu_pod_specs(receiver):
    gpu = k.inference_service(NS, "v2", replicas=1)
    gpu["metadata"]["name"] = "fraud-gpu"
    gpu["spec"]["runtime"]["executionProvider"] = "cuda"
    gpu["spec"]["runtime"]["providerOptions"] = {"deviceId": 0, "cudnnConvAlgoSearch": "heuristic"}
    gpu["spec"]["resources"] = {"cpu": "1", "memory": "512Mi", "gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}}
    trt = k.inference_service(NS, "v2", replicas=1)
    trt["metadata"]["name"] = "fraud-trt"
    trt["spec"]["runtime"].update(executionProvider="tensorrt", providerOptions={"fp16": True})
    trt["spec"]["resources"] = {"cpu": "1", "memory": "512Mi", "gpu": {"count": 1}}
    k.apply([gpu, trt])
    p = k.wait_for("the GPU pod", lambda: k.pods(NS, "fraud-gpu"))[0]
    runtime = [c for c in p["spec"]["containers"] if c["name"] == "runtime"][0]
    # The operator's GPU image (ONNX Runtime with the CUDA provider) and the provider's options.
    assert runtime["image"].startswith("kinfer.local/kinfer-runtime-gpu:"), runtime["image"]
    assert "--execution-provider cuda --cuda-device-id 0 --cudnn-conv-algo-search heuristic" in " ".join(runtime["args"])
    t = k.wait_for("the TensorRT pod", lambda: k.pods(NS, "fraud-trt"))[0]
    t_rt = [c for c in t["spec"]["containers"] if c["name"] == "runtime"][0]
    assert "--trt-fp16 --trt-engine-cache /var/cache/kinfer/tensorrt" in " ".join(t_rt["args"]), t_rt["args"]
    cache = [v for v in t["spec"]["volumes"] if v["name"] == "tensorrt-cache"]
    assert cache and cache[0]["emptyDir"]["sizeLimit"] == "4Gi", t["spec"]["volumes"]
    assert {"name": "tensorrt-cache", "mountPath": "/var/cache/kinfer/tensorrt"}.items() <= [
        m for m in t_rt["volumeMounts"] if m["name"] == "tensorrt-cache"][0].items()
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert p["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert any(t.get("key") == "nvidia.com/gpu" for t in p["spec"]["tolerations"])
    assert "cuda" in " ".join(runtime.get("args", []) + runtime.get("command", []))
    svc = k.wait_for("the GPU service saying why it is not ready",
                     lambda: (lambda s: s if (k.condition(s, "Ready") or {}).get("status") == "False"
                              and "nvidia.com/gpu" in k.condition(s, "Ready")["message"] else None)(k.kget("inferenceservice", "fraud-gpu", NS)), timeout=120)
    assert k.kget("pod", p["metadata"]["name"], NS)["status"]["phase"] == "Pending"
    # No pod serves it, so no version is called serving.
    assert not svc["status"].get("servingVersion") and svc["status"]["targetVersion"] == "fraud-v2", svc["status"]
    k.kubectl("delete", "inferenceservice", "-n", NS, "fraud-gpu", "fraud-trt")


def test_6b_a_pinned_runtime_runs_every_inference_thread_on_cpus_of_its_own(receiver):
    """The kubelet's static CPU manager (tests/e2e/cluster/README.md) gives the pinned pod's
    runtime a CPU of its own; every thread of the runtime stays on it, an unpinned runtime is
    moved off it, and the watcher and the operator say so in the pod's and the service's
    `CpuPinned` conditions. The node's 1990m allocatable holds the pinned pod beside one fraud
    pod, so fraud is scaled to 1 meanwhile."""
    apply_isvc("v7", receiver, replicas=1)
    k.wait_for("fraud on one pod", lambda: len(k.pods(NS)) == 1 and len(ready_pods()) == 1, timeout=180)
    pinned = k.inference_service(NS, "v7", replicas=1)
    pinned["metadata"]["name"] = "fraud-pinned"
    pinned["spec"]["runtime"] = {}
    pinned["spec"]["resources"] = {"cpu": "1", "memory": "256Mi", "cpuPinning": True}
    # The audit trail from the CRD: every other decision as a JSON line in the runtime's log.
    pinned["spec"]["policy"] = {"output": "probs", "thresholds": [{"min": 0.5, "label": "block"}],
                                "decisionLog": {"sampleRate": 0.5, "sink": "stdout"}}
    k.apply([pinned])
    q = k.wait_for("the pinned pod Ready", lambda: [x for x in k.pods(NS, "fraud-pinned")
                                                   if (k.condition(x, "Ready") or {}).get("status") == "True"], timeout=300)[0]
    assert q["status"]["qosClass"] == "Guaranteed"
    rt = [c for c in q["spec"]["containers"] if c["name"] == "runtime"][0]
    assert "--intra-op-threads 1 --cpu-affinity auto --exclusive-cpus 1" in " ".join(rt["args"]), rt["args"]
    threads = k.thread_cpus(k.container_pid(q, "runtime"))
    own = set().union(*(cpus for _, cpus in threads.values()))
    # One CPU, not the reserved CPU 0 (the shared pool), for the process and all its threads.
    assert len(own) == 1 and 0 not in own, threads
    assert any(name.startswith("ort-") for name, _ in threads.values()), threads
    # The unpinned runtime's cpuset leaves that CPU out (the kubelet narrows the shared pool on
    # its 10 s reconcile after the pinned pod starts).
    other = k.pods(NS)[0]
    k.wait_for("the unpinned runtime off the pinned CPU", lambda: all(
        not (cpus & own) for _, cpus in k.thread_cpus(k.container_pid(other, "runtime")).values()), timeout=60)
    c = k.wait_for("the pod's CpuPinned condition", lambda: k.condition(k.kget("pod", q["metadata"]["name"], NS), "kinfer.dev/CpuPinned"))
    assert (c["status"], c["reason"]) == ("True", "ExclusiveCpus"), c
    assert f"pinned one per CPU on {min(own)}" in c["message"], c
    s = k.wait_for("the service's CpuPinned condition", lambda: (lambda x: x if (k.condition(x, "CpuPinned") or {}).get("status") == "True" else None)(
        k.kget("inferenceservice", "fraud-pinned", NS)), timeout=60)
    assert k.condition(s, "Ready")["status"] == "True"
    assert k.condition(k.kget("inferenceservice", "fraud", NS), "CpuPinned") is None
    # The decision log, read as a log collector would: `kubectl logs` of the runtime container.
    import tritonclient.http as th
    client = th.InferenceServerClient(f"{q['status']['podIP']}:8080")
    for i in range(6):
        x = th.InferInput("x", [2, 8], "FP32")
        x.set_data_from_numpy(np.full((2, 8), i / 6, np.float32))
        client.infer("fraud-pinned", [x], request_id=f"audit-{i}")
    digest = k.kget("modelversion", "fraud-v7", NS)["status"]["digest"]

    def decisions():
        lines = k.kubectl("logs", "-n", NS, q["metadata"]["name"], "-c", "runtime").splitlines()
        return [d for d in (json.loads(x) for x in lines if x.startswith("{")) if d.get("kind") == "decision"]
    got = k.wait_for("three decision lines in the runtime's log", lambda: (lambda d: d if len(d) >= 3 else None)(decisions()), timeout=30)
    assert [d["request_id"] for d in got] == ["audit-1", "audit-3", "audit-5"], got
    for d in got:
        assert d["version"] == "fraud-v7" and d["digest"] == digest and d["model"] == "fraud-pinned", d
        assert len(d["decisions"]) == 2 and set(d["decisions"]) <= {"block", "allow"} and d["latency_us"] > 0, d
    k.kubectl("delete", "inferenceservice", "-n", NS, "fraud-pinned")
    apply_isvc("v7", receiver)


def all_pods_ready_with(version):
    pods = k.pods(NS)
    return len(ready_pods()) == 3 and all(
        p["metadata"].get("annotations", {}).get("kinfer.dev/serving-version") == version
        and (k.condition(p, "kinfer.dev/ModelReady") or {}).get("status") == "True" for p in pods)


def test_7_rollout_across_a_30s_api_server_outage(receiver):
    """The API server stops for 30 s while the canary is analysed: the pods keep serving, the
    canary's verdict (reached while nobody could write it) reaches the operator once the API is
    back, and the rollout finishes with every pod Ready."""
    k.wait_for("fraud-v7 on every pod", lambda: all_pods_ready_with("fraud-v7"), timeout=180)
    with k.Load(k.service_ip(NS), rate=100) as load:
        time.sleep(2)
        apply_isvc("v8", receiver)
        k.wait_for("the canary marked", lambda: isvc()["status"].get("rollout", {}).get("phase") == "Canary"
                   and any(p["metadata"].get("annotations", {}).get("kinfer.dev/target-version") == "fraud-v8"
                           for p in k.pods(NS)), timeout=120, interval=0.3)
        down = k.stop_api_server(30)
        assert down >= 30
        k.wait_for("fraud-v8 promoted after the outage", lambda: isvc() if isvc()["status"].get("servingVersion") == "fraud-v8" else None,
                         timeout=500)
        k.wait_for("every pod Ready with fraud-v8", lambda: all_pods_ready_with("fraud-v8"), timeout=180)
        time.sleep(2)
    # On failure, the node's Events say whether the node lifecycle controller took the endpoints
    # away (NodeNotReady) or something of kinfer's did.
    assert load.failed == 0, (load.errors[:5], k.kubectl(
        "get", "events", "-A", "--field-selector", "involvedObject.kind=Node", check=False)[-2000:])
    # The status catches up once the operator leads again (it may have restarted during the
    # outage and waits out its old lease).
    k.wait_for("Ready=True on the service", lambda: k.condition(isvc(), "Ready")["status"] == "True", timeout=180)
    reports = [k.analysis(p) for p in k.pods(NS)]
    assert all(r and r["version"] == "fraud-v8" and r["verdict"] == "Passed" for r in reports), reports


def test_8_a_regression_with_auto_rollback_off_stops_the_rollout(receiver):
    """autoRollback: false and a version with 1.6× the compute: the canary's real watcher reports it
    Regressed and keeps it; the operator stops the rollout there (RolloutStopped condition,
    Event and alert), and no other pod is ever asked for it."""
    base = k.inference_service(NS, "v8", webhook=receiver.url)["spec"]["rollout"]
    with k.Load(k.service_ip(NS), rate=100) as load:
        time.sleep(2)
        apply_isvc("v9", receiver, rollout={**base, "autoRollback": False})
        svc = k.wait_for("the rollout of fraud-v9 stopped", lambda: (lambda s: s if s["status"].get("rejectedVersion") == "fraud-v9"
                         and (k.condition(s, "Progressing") or {}).get("reason") == "RolloutStopped" else None)(isvc()), timeout=300)
        time.sleep(10)  # nothing more is promoted in the meantime
        serving = serving_annotations()
        targets = [p["metadata"].get("annotations", {}).get("kinfer.dev/target-version") for p in k.pods(NS)]
    assert load.failed == 0, load.errors[:5]
    assert svc["status"]["servingVersion"] == "fraud-v8", svc["status"]
    assert serving == ["fraud-v8", "fraud-v8", "fraud-v9"], serving
    assert targets.count("fraud-v9") == 1, targets
    regressed = [r for r in map(k.analysis, k.pods(NS)) if r and r["version"] == "fraud-v9"]
    assert len(regressed) == 1 and regressed[0]["verdict"] == "Regressed" and regressed[0]["reason"] == "LatencyRegression", regressed
    assert "stopped" in k.condition(svc, "Progressing")["message"]
    assert k.wait_for("a RolloutStopped Warning Event", lambda: [e for e in k.events(NS, "RolloutStopped") if e["type"] == "Warning"])
    alerts = k.wait_for("the stop alert", lambda: [r for r in receiver.received if "fraud-v9" in json.dumps(r["body"])
                                                   and not r["path"].endswith("/slack")], timeout=60)
    assert alerts[0]["body"][0]["labels"]["alertname"] == "KinferRolloutStopped", alerts[0]["body"]
    assert len(ready_pods()) == 3, "the canary keeps serving, Ready"


def test_9_the_dashboards_metrics_are_in_real_scrapes():
    """Every `kinfer_*` name the chart's Grafana dashboard queries is exported by the operator
    (its leader, scraped on its metrics port) or by a serving pod's runtime (port 9090) — save the
    two that need a policy or a previous version with traffic, which the runtime tier checks."""
    import re
    import urllib.request
    dash = json.loads((ROOT / "charts/kinfer-operator/files/dashboards/kinfer.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"\bkinfer_[a-z0-9_]+", e)}

    def names(url):
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line.startswith("kinfer_")}
    operators = k.kget("pods", ns=SYSTEM_NS, selector="app.kubernetes.io/name=kinfer-operator")["items"]
    assert operators

    def metrics_port(pod):
        return next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if p["name"] == "metrics")
    operator = set().union(*(names(f"http://{p['status']['podIP']}:{metrics_port(p)}/metrics") for p in operators))
    runtime = names(f"http://{k.pods(NS)[0]['status']['podIP']}:9090/metrics")
    assert "kinfer_rollbacks_total" in operator and "kinfer_model_rollbacks_total" in runtime
    missing = sorted(wanted - operator - runtime - {"kinfer_drift_score", "kinfer_decisions_total"})
    assert not missing, f"the dashboard queries {missing}, which neither the operator nor a runtime exports"
