"""The GPU runtime image on the local (GPU-less) node: built by `images/build.sh runtime-gpu`,
imported, and run as pods under the restricted Pod Security Standard with a read-only root
filesystem, as the operator runs it.

- With `--execution-provider cuda --ep-fallback cpu` it starts, says it serves on the CPU and
  why (ORT's error, which names the missing driver library), answers inferences, and reports
  the provider in use in its model metadata and metrics.
- Without the fallback it does not start, and says which library is missing and what to do.
"""
import json
import subprocess
import time

import pytest

import kinfer_e2e as k

ROOT = k.ROOT
NS = "kinfer-e2e-gpu-image"
TAG = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().split("[workspace.package]", 1)[1].splitlines()
           if line.startswith("version"))
IMAGE = f"kinfer.local/kinfer-runtime-gpu:{TAG}"
SEC = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
       "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.fixture(scope="module")
def namespace():
    subprocess.run(["bash", str(ROOT / "tests" / "e2e" / "cluster" / "up.sh")], check=True, env=k.env(), timeout=1800)
    t = time.monotonic()
    subprocess.run([str(ROOT / "images" / "build.sh"), "--import", "runtime-gpu"], check=True, env=k.env(), timeout=2400,
                   stdout=subprocess.DEVNULL)
    print(f"images/build.sh --import runtime-gpu: {time.monotonic() - t:.0f} s")
    k.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=180)
    k.kubectl("create", "namespace", NS)
    k.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
    k.kubectl("create", "configmap", "smoke-model", "-n", NS, f"--from-file=add-one.onnx={ROOT / 'images' / 'smoke' / 'add-one.onnx'}")
    yield NS
    k.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def runtime_pod(name, *args):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "runtime", "image": IMAGE, "imagePullPolicy": "Never",
                "args": ["--model", "/models/add-one.onnx", "--model-name", "smoke", "--log-format", "json", *args],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 1},
                "securityContext": SEC,
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "models", "configMap": {"name": "smoke-model"}}, {"name": "tmp", "emptyDir": {}}],
        },
    }


def http(ip, path, body=None, port=8080):
    args = ["curl", "-sS", "-m", "10", f"http://{ip}:{port}{path}"]
    if body is not None:
        args[1:1] = ["-H", "content-type: application/json", "-d", json.dumps(body)]
    return k.sh(*args)


def test_gpu_image_serves_on_the_cpu_with_the_fallback_and_says_so(namespace):
    k.apply([runtime_pod("fallback", "--execution-provider", "cuda", "--ep-fallback", "cpu")])
    k.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/fallback", "--timeout=180s", timeout=200)
    ip = k.kget("pod", "fallback", NS)["status"]["podIP"]
    out = json.loads(http(ip, "/v2/models/smoke/infer",
                          {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}))
    assert out["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0], out
    meta = json.loads(http(ip, "/v2/models/smoke"))
    assert meta["parameters"]["execution_provider"] == "cpu", meta
    metrics = http(ip, "/metrics", port=9090)
    assert 'kinfer_execution_provider{model="smoke",version="1",provider="cpu"} 1' in metrics, \
        [m for m in metrics.splitlines() if "provider" in m]
    logs = [json.loads(line) for line in k.kubectl("logs", "-n", NS, "fallback").splitlines() if line.startswith("{")]
    warned = [e for e in logs if "serving on the CPU (--ep-fallback cpu)" in e.get("fields", {}).get("message", "")]
    assert warned, logs[:10]
    # ORT's own error says what is missing on this node: the NVIDIA driver's library.
    assert "libcuda.so.1" in warned[0]["fields"].get("error", ""), warned[0]


def test_gpu_image_without_the_fallback_refuses_to_start_naming_the_library(namespace):
    k.apply([runtime_pod("strict", "--execution-provider", "cuda")])
    pod = k.wait_for("the strict pod to end", lambda: (lambda p: p if p["status"].get("phase") in ("Failed", "Succeeded") else None)(
        k.kget("pod", "strict", NS)), timeout=180)
    assert pod["status"]["phase"] == "Failed", pod["status"]
    logs = k.kubectl("logs", "-n", NS, "strict")
    assert "execution provider cuda cannot start" in logs, logs[-2000:]
    assert "libcuda.so.1" in logs and "--ep-fallback cpu" in logs, logs[-2000:]
