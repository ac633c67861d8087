"""Shared by `make demo` (scripts/demo.py) and the e2e suite (tests/e2e/test_e2e.py): signed
sample model versions uploaded to the cluster's S3, manifests, kubectl helpers, a webhook
receiver, and a client that sends OIP v2 requests through a Service with tritonclient."""
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
import load  # noqa: E402
import models  # noqa: E402

CACHE = pathlib.Path(os.environ.get("KINFER_CACHE", pathlib.Path.home() / ".cache" / "kinfer"))
CLUSTER = pathlib.Path(os.environ.get("KINFER_CLUSTER_DIR", CACHE / "cluster"))
KUBECONFIG = str(CLUSTER / "kubeconfig")
VENV = pathlib.Path(os.environ.get("KINFER_VENV", ROOT / ".venv"))
HOST_IP = "10.250.0.1"  # the node address pods can reach (tests/e2e/cluster/README.md)
TARGET_DIR = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# The chart values every e2e module installs with (scripts/e2e-setup.sh passes them to helm):
# KEDA (tests/e2e/cluster/autoscaling.sh, a host process) reads the Prometheus of monitoring.sh,
# and the operator and the traced pods send spans to the Jaeger of tracing.sh on the node address.
CHART_VALUES = ["--set", "autoscaling.keda.prometheusAddress=http://127.0.0.1:9490",
                "--set", f"tracing.otlpEndpoint=http://{HOST_IP}:4317"]

# The sample versions: what each one is and how it should fare. Each has the same 10-layer side
# chain (~0.6 ms of compute; its result is multiplied by 0), so "slower" is a ratio of the same
# work: 16 layers are 1.6× the compute, 1.2–1.5× the request latency (1.23× measured in the e2e's
# pods, where the server's own cost weighs more; 1.4× on a free core).
BASE_LAYERS = 10
VERSIONS = {
    "v1": dict(fn=lambda p: models.scorer(p, seed=0, slow_layers=BASE_LAYERS), about="the first version"),
    "v2": dict(fn=lambda p: models.scorer(p, seed=0, weight_noise=1e-3, slow_layers=BASE_LAYERS),
               about="retrained, equivalent: promoted"),
    "v3": dict(fn=lambda p: models.scorer(p, seed=0, slow_layers=16),
               about="same answers, 1.6x the compute (~1.2-1.5x the latency): rolled back"),
    "v4": dict(fn=lambda p: models.scorer(p, seed=0, weight_noise=1e-3, logit_shift=4.0, slow_layers=BASE_LAYERS),
               about="answers drift: rolled back on drift"),
    "v5": dict(fn=lambda p: models.scorer(p, seed=0, slow_layers=BASE_LAYERS), tamper=True,
               about="model changed after signing: refused"),
    "v6": dict(fn=lambda p: models.scorer(p, seed=0, slow_layers=BASE_LAYERS),
               golden_from=lambda p: models.scorer(p, seed=5, slow_layers=BASE_LAYERS),
               about="does not match its golden set: refused"),
    "v7": dict(fn=lambda p: models.scorer(p, seed=0, weight_noise=2e-3, slow_layers=BASE_LAYERS),
               about="equivalent: promoted across an operator failover"),
    "v8": dict(fn=lambda p: models.scorer(p, seed=0, weight_noise=3e-3, slow_layers=BASE_LAYERS),
               about="equivalent: promoted across a 30 s API server outage"),
    "v9": dict(fn=lambda p: models.scorer(p, seed=0, slow_layers=16),
               about="1.6x the compute, autoRollback off: Regressed, the rollout stops on the canary"),
}


def env():
    e = dict(os.environ, KUBECONFIG=KUBECONFIG)
    k8s = sorted((CACHE / "bin").glob("kubernetes-*"))
    helm = sorted((CACHE / "bin").glob("helm-*"))
    extra = [str(p) for p in (k8s[-1:] + helm[-1:])]
    e["PATH"] = ":".join(extra + [e.get("PATH", "")])
    return e


def s3_settings():
    vals = {}
    for line in (CLUSTER / "s3.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            vals[k.strip()] = v.strip().strip('"')
    return vals


def sh(*args, check=True, input=None, timeout=120):
    p = subprocess.run(list(args), capture_output=True, text=True, env=env(), input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def kubectl(*args, **kw):
    return sh("kubectl", *args, **kw)


def kget(kind, name=None, ns=None, selector=None):
    args = ["get", kind] + ([name] if name else []) + (["-n", ns] if ns else []) + (["-l", selector] if selector else [])
    return json.loads(kubectl(*args, "-o", "json"))


def apply(manifest, ns=None):
    text = manifest if isinstance(manifest, str) else "\n---\n".join(json.dumps(m) for m in manifest)
    return kubectl("apply", *(["-n", ns] if ns else []), "-f", "-", input=text)


def container_pid(pod, container):
    """The node's PID of a running container's first process (containerd's task list)."""
    cid = [c for c in pod["status"]["containerStatuses"] if c["name"] == container][0]["containerID"].split("://", 1)[1]
    out = sh("ctr", "--address", str(CLUSTER / "run/containerd/containerd.sock"), "-n", "k8s.io", "tasks", "ls")
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith(cid)))


def container_root(pod, container):
    """The root filesystem of a running container, seen from the node (/proc/<pid>/root)."""
    return pathlib.Path(f"/proc/{container_pid(pod, container)}/root")


def parse_cpus(text):
    """A Linux CPU list (`0-2,5`) as a set of CPU numbers."""
    cpus = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def thread_cpus(pid):
    """Every thread of process `pid`: {thread id: (thread name, CPUs it may run on)}."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            name = (task / "comm").read_text().strip()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        allowed = next(line.split(":", 1)[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
        out[int(task.name)] = (name, parse_cpus(allowed))
    return out


PROMETHEUS = "http://127.0.0.1:9490"  # tests/e2e/cluster/monitoring.sh


def prom_query(expr):
    """An instant query against the cluster's Prometheus: the result vector."""
    import urllib.parse
    import urllib.request
    with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def stop_api_server(seconds):
    """Stops the cluster's kube-apiserver (SIGTERM: connections refused, not merely slow) for
    `seconds`, then starts it again with the same command line and waits until it is ready."""
    import signal

    pidfile = CLUSTER / "pids" / "kube-apiserver.pid"
    pid = int(pidfile.read_text())
    cmd = [a.decode() for a in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 30
    while pathlib.Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.2)
    stopped = time.time()
    time.sleep(seconds)
    with open(CLUSTER / "logs" / "kube-apiserver.log", "ab") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(p.pid))
    wait_for("kube-apiserver ready again", lambda: kubectl("get", "--raw", "/readyz", check=False).strip() == "ok",
             timeout=120, interval=0.5)
    return time.time() - stopped


def wait_for(what, fn, timeout=180, interval=1.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - shown on timeout
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {str(last)[:2000]}")


def make_keys(workdir):
    priv, pub = workdir / "release.key", workdir / "release.pub"
    if not priv.exists():
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(priv)], check=True)
        subprocess.run(["openssl", "ec", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    return priv, pub


def make_artifact(workdir, version, priv):
    """Writes model.onnx, golden.npz and model.sig (the real model_signing CLI) for a sample version."""
    spec = VERSIONS[version]
    d = workdir / "artifacts" / version
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model = spec["fn"](d / "model.onnx")
    ref = spec["golden_from"](workdir / f"{version}-ref.onnx") if "golden_from" in spec else model
    models.golden(d / "golden.npz", ref, n=64, seed=3)
    subprocess.run([str(VENV / "bin/model_signing"), "sign", "key", str(d), "--private_key", str(priv),
                    "--signature", str(d / "model.sig")], check=True, capture_output=True)
    if spec.get("tamper"):
        data = bytearray((d / "model.onnx").read_bytes())
        data[-5] ^= 0x01
        (d / "model.onnx").write_bytes(bytes(data))
    return d


def upload(local_dir, prefix):
    import boto3

    s = s3_settings()
    c = boto3.client("s3", endpoint_url=s["S3_ENDPOINT"], aws_access_key_id=s["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=s["AWS_SECRET_ACCESS_KEY"], region_name=s.get("AWS_REGION", "us-east-1"))
    for f in sorted(pathlib.Path(local_dir).iterdir()):
        c.upload_file(str(f), s["S3_BUCKET"], f"{prefix}/{f.name}")
    return f"s3://{s['S3_BUCKET']}/{prefix}/"


def base_objects(ns, pub):
    """The S3 credentials Secret and the trusted-keys ConfigMap a namespace needs."""
    s = s3_settings()
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": ns},
         "stringData": {"AWS_ACCESS_KEY_ID": s["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": s["AWS_SECRET_ACCESS_KEY"]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-signing-keys", "namespace": ns},
         "data": {"release.pem": pathlib.Path(pub).read_text()}},
    ]


def model_version(ns, version, uri):
    s = s3_settings()
    return {"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": f"fraud-{version}", "namespace": ns},
            "spec": {"model": "fraud", "version": version,
                     "source": {"uri": uri, "endpoint": s["S3_ENDPOINT"], "credentialsSecret": "s3-credentials"},
                     "signature": {"required": True, "trustedKeys": {"configMap": "model-signing-keys"}},
                     "validation": {"goldenSet": "golden.npz", "atol": 1e-4, "rtol": 1e-3, "minAgreement": 1.0}}}


# The drift rule a test adds to the default analysis: decisions on the inputs run on both
# versions may differ on at most 5% of them.
DRIFT = {"metric": "psi", "maxScore": 0.2, "maxDisagreement": 0.05}


def inference_service(ns, version, replicas=3, webhook=None, analysis=None, **extra):
    """The sample service with the CRD's default analysis (`analysis` adds to it) — the paired
    baseline (the previous version answers half of each pod's requests while the new one is
    judged), window 30 s, maxWindow 2 min, confidence 0.95, maxLatencyRatio 1.15, no drift rule.
    Nothing is loosened for the shared 2-core node: a pass takes ~1,200 requests per side (the
    error-rate bound), ~75 s per rollout step at the ~33 requests/s a pod gets here."""
    analysis = dict(analysis or {})
    spec = {"modelVersion": f"fraud-{version}", "replicas": replicas,
            "runtime": {"intraOpThreads": 1},
            "resources": {"cpu": "250m", "memory": "256Mi"},
            "rollout": {"canary": {"replicas": 1}, "analysis": analysis, "autoRollback": True}}
    if webhook:
        # The receiver is plain http on the node: allowed explicitly, as a user must.
        spec["alerts"] = {"webhooks": [{"url": webhook, "format": "alertmanager", "allowInsecureHttp": True},
                                       {"url": webhook + "/slack", "format": "slack", "allowInsecureHttp": True}]}
    spec.update(extra)
    return {"apiVersion": "kinfer.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "fraud", "namespace": ns}, "spec": spec}


class WebhookReceiver:
    """An HTTP server on the node address that records every POST (the alert receiver)."""

    def __init__(self, host=HOST_IP):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    received.append({"path": self.path, "body": json.loads(body)})
                except ValueError:
                    received.append({"path": self.path, "body": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def service_ip(ns, name="fraud"):
    return kget("service", name, ns)["spec"]["clusterIP"]


def infer(host, rows, protocol="http", model="fraud"):
    """One OIP v2 request through the Service with tritonclient; returns (probs, model_version)."""
    x = np.asarray(rows, dtype=np.float32)
    if protocol == "http":
        import tritonclient.http as tc

        c = tc.InferenceServerClient(f"{host}:8080")
    else:
        import tritonclient.grpc as tc

        c = tc.InferenceServerClient(f"{host}:8081")
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer(model, [inp])
    version = r.get_response()["model_version"] if protocol == "http" else r.get_response().model_version
    return r.as_numpy("probs"), version


def Load(host, rate=100, model="fraud"):  # noqa: N802 - reads as the class it wraps
    """Steady OIP requests through a Service (a connection per request, so kube-proxy spreads them)."""
    return load.Load(f"http://{host}:8080/v2/models/{model}/infer", rate, new_connection_per_request=True, seed=5)


def pods(ns, name="fraud"):
    return kget("pods", ns=ns, selector=f"kinfer.dev/inferenceservice={name}")["items"]


def analysis(pod):
    raw = pod["metadata"].get("annotations", {}).get("kinfer.dev/analysis")
    return json.loads(raw) if raw else None


def restarts(pod):
    return {c["name"]: c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses", [])}


def condition(obj, type_):
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c["type"] == type_:
            return c
    return None


def events(ns, reason=None):
    items = kget("events", ns=ns)["items"]
    return [e for e in items if reason is None or e.get("reason") == reason]
