"""The model-watcher as plain processes: a real kinfer-runtime, a real S3 server (SeaweedFS
`weed mini` on loopback), artifacts signed by the real `model_signing` CLI, and `kinfer-watcher
run` standalone (exit 0 passed, 2 rolled back, 3 refused). Live traffic comes from a load thread;
every test asserts what serves afterwards and that no live request failed."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

import boto3
import pytest

import models
from load import Load as _Load
from conftest import ROOT, TARGET, free_port

WATCHER = pathlib.Path(os.environ.get("KINFER_WATCHER_BIN", TARGET / "debug" / "kinfer-watcher"))
RUNTIME = pathlib.Path(os.environ.get("KINFER_RUNTIME_BIN", TARGET / "debug" / "kinfer-runtime"))
VENV = pathlib.Path(os.environ.get("KINFER_VENV", ROOT / ".venv"))
AK, SK = "watchertest", "watchertestsecret0123456789"
BUCKET = "models"


def weed_binary():
    root = pathlib.Path(os.environ.get("KINFER_BIN_ROOT", pathlib.Path.home() / ".cache/kinfer/bin"))
    for d in sorted(root.glob("seaweedfs-*")):
        if (d / "bin/weed").is_file():
            return d / "bin/weed"
    raise RuntimeError(f"SeaweedFS not found under {root}: run `bash tests/e2e/cluster/build.sh s3` (make test does)")


class S3:
    """`weed mini` on loopback with SigV4 credentials; stop/start keep the data and ports."""

    def __init__(self, workdir):
        self.dir = workdir / f"s3-{free_port()}"
        (self.dir / "data").mkdir(parents=True)
        ids = self.dir / "ids.json"
        ids.write_text(json.dumps({"identities": [{"name": "t", "credentials": [{"accessKey": AK, "secretKey": SK}],
                                                   "actions": ["Admin", "Read", "Write", "List"]}]}))
        self.port = free_port()
        self.args = [str(weed_binary()), "mini", "-dir", str(self.dir / "data"), "-ip", "127.0.0.1",
                     "-ip.bind", "127.0.0.1", "-s3.port", str(self.port), "-master.port", str(free_port()),
                     "-volume.port", str(free_port()), "-filer.port", str(free_port()), "-s3.config", str(ids),
                     "-bucket", BUCKET, "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                     "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB", "64"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.creds = self.dir / "s3.env"
        self.creds.write_text(f"AWS_ACCESS_KEY_ID={AK}\nAWS_SECRET_ACCESS_KEY={SK}\n")
        self.proc = None
        self.start()

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
                            region_name="us-east-1")

    def start(self):
        env = dict(os.environ, TMPDIR=str(self.dir))
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.client().head_bucket(Bucket=BUCKET)
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("weed mini did not serve S3 in 60 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def upload(self, local_dir, prefix):
        c = self.client()
        for f in sorted(pathlib.Path(local_dir).iterdir()):
            c.upload_file(str(f), BUCKET, f"{prefix}/{f.name}")
        return f"s3://{BUCKET}/{prefix}/"


@pytest.fixture(scope="module")
def s3(workdir):
    s = S3(workdir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def signing_key(workdir):
    d = workdir / "keys"
    d.mkdir(exist_ok=True)
    priv, pub = d / "release.key", d / "release.pub"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(priv)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    return priv, pub


def artifact(workdir, name, model_fn, golden_from=None, sign_key=None, tamper=False, extra=None):
    """A version directory: model.onnx, golden.npz (references from `golden_from`'s model, by
    default the model itself, as a training framework would export them), model.sig."""
    d = workdir / "artifacts" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model = model_fn(d / "model.onnx")
    ref = model
    if golden_from is not None:
        ref = golden_from(workdir / "artifacts" / f"{name}-ref.onnx")
    models.golden(d / "golden.npz", ref, n=64, seed=3)
    for file_name, data in (extra or {}).items():
        (d / file_name).write_bytes(data)
    if sign_key is not None:
        subprocess.run([str(VENV / "bin/model_signing"), "sign", "key", str(d), "--private_key", str(sign_key),
                        "--signature", str(d / "model.sig")], check=True, capture_output=True)
    if tamper:
        data = bytearray((d / "model.onnx").read_bytes())
        data[-5] ^= 0x01
        (d / "model.onnx").write_bytes(bytes(data))
    return d


def Load(runtime, rate=400):  # noqa: N802 - reads as the class it wraps
    """Keep-alive load on one runtime process."""
    return _Load(runtime.url(f"/v2/models/{runtime.name}/infer"), rate)


def watcher_args(runtime, workdir, s3, source, version, *flags, creds=None, keys=None, socket=None, endpoint=None):
    """`kinfer-watcher run` standalone against `runtime` (or an admin `socket` in front of it)."""
    models_dir = workdir / f"models-{runtime.http_port}"
    args = [str(WATCHER), "run", "--admin-socket", socket or runtime.socket, "--models-dir", str(models_dir),
            "--source", source, "--endpoint", endpoint or s3.endpoint, "--credentials-file", str(creds or s3.creds),
            "--version", version, *flags]
    for k in keys or []:
        args += ["--public-key", str(k)]
    return args


def run_watcher(runtime, workdir, s3, source, version, *flags, timeout=120, creds=None, keys=None):
    args = watcher_args(runtime, workdir, s3, source, version, *flags, creds=creds, keys=keys)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    reports = [line["report"] for line in lines if "report" in line]
    events = [line["event"] for line in lines if "event" in line]
    assert reports, f"no report; exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}"
    return p.returncode, reports[-1], events, p


def serving(runtime):
    code, stats = runtime.admin("GET", "/admin/stats")
    assert code == 200
    return stats["serving"], sorted(stats["versions"])


ANALYSIS = ["--window", "3s", "--p99-noise-floor", "1ms", "--min-requests", "150", "--max-p99-ratio", "2.0", "--max-error-rate", "0.01",
            "--max-drift", "0.2", "--golden", "golden.npz", "--atol", "1e-4", "--rtol", "1e-3"]

# For a test about something else under load: a verdict judged at once (window 0) on the few
# requests after the swap is a coin flip on a busy 2-core machine (CI rolled the outage test's
# version back once; with both cores busy here, 2 runs of 3 did: "p90 … over 20 requests"), so
# latency never decides; errors and the golden set still do.
NO_LATENCY_VERDICT = ["--max-p99-ratio", "1000", "--max-latency-ratio", "1000", "--p99-noise-floor", "10s"]


def base(p):
    return models.scorer(p, seed=0)


@pytest.fixture
def served_v1(start, workdir):
    # v1 serves already (from a file), as after an earlier rollout.
    v1 = models.scorer(workdir / "scorer-v1.onnx", seed=0)
    return start(v1, "fraud", version="v1")


def test_good_version_is_promoted_and_kept(served_v1, workdir, s3, signing_key):
    priv, pub = signing_key
    d = artifact(workdir, "good", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv)
    src = s3.upload(d, "fraud/good")
    with Load(served_v1) as load:
        time.sleep(1.0)  # a baseline for v1
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "good", *ANALYSIS, keys=[pub])
    assert code == 0, p.stderr[-3000:]
    assert report["phase"] == "Done" and report["verdict"] == "Passed", report
    assert report["previousVersion"] == "v1"
    assert report["signer"].startswith("sha256:") and report["digest"].startswith("sha256:")
    assert report["gate"]["samples"] == 64 and report["gate"]["agreement"] == 1.0
    f = report["figures"]
    assert f["requests"] >= 150 and f["baselineP99"] > 0 and f["drift"] < 0.2, f
    assert {e["reason"] for e in events} >= {"Promoted", "AnalysisPassed"}
    assert serving(served_v1)[0] == "good"
    assert load.failed == 0, load.errors[:3]
    assert load.versions.get("good", 0) > 0 and load.versions.get("v1", 0) > 0


def test_numerically_different_version_is_refused_before_serving(served_v1, workdir, s3, signing_key):
    priv, pub = signing_key
    # The exported references come from another model (a training/serving mismatch).
    d = artifact(workdir, "mismatch", base, golden_from=lambda p: models.scorer(p, seed=5), sign_key=priv)
    src = s3.upload(d, "fraud/mismatch")
    with Load(served_v1) as load:
        code, report, events, _ = run_watcher(served_v1, workdir, s3, src, "mismatch", *ANALYSIS, keys=[pub])
    assert code == 3
    assert report["verdict"] == "Refused" and report["reason"] == "NumericalMismatch", report
    assert report["gate"]["maxAbsError"] > 1e-4 and "golden set mismatch" in report["message"]
    assert any(e["reason"] == "NumericalMismatch" and e["type"] == "Warning" for e in events)
    assert serving(served_v1) == ("v1", ["v1"])  # refused version unloaded, never served
    assert load.failed == 0 and "mismatch" not in load.versions


def test_slower_version_is_rolled_back_against_the_paired_baseline(served_v1, workdir, s3, signing_key):
    """The default analysis: v1 answers a random half of the live requests while the candidate is
    judged, and the verdict is the interval of the latency ratio over those same moments."""
    priv, pub = signing_key
    # ~2.4 ms more compute per request: many times whatever v1 does.
    d = artifact(workdir, "slow", lambda p: models.scorer(p, seed=0, slow_layers=40), sign_key=priv)
    src = s3.upload(d, "fraud/slow")
    with Load(served_v1) as load:
        time.sleep(1.0)
        before = dict(load.versions)
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "slow", *ANALYSIS, keys=[pub])
        time.sleep(0.3)
    assert code == 2, p.stderr[-3000:]
    assert report["verdict"] == "RolledBack" and report["reason"] == "LatencyRegression", report
    f = report["figures"]
    assert f["latencyRatioLow"] > 1.15 and f["requests"] >= 150 and f["baselineRequests"] >= 150, f
    m = re.match(r"latency ([0-9.]+)× the baseline's \(([0-9.]+)–([0-9.]+) at 95% confidence; p50 ", report["message"])
    assert m and float(m.group(2)) >= 1.15, report["message"]  # printed to 2 decimals
    assert "in the same window, over maxLatencyRatio 1.15" in report["message"]
    assert "rolled back to v1" in report["message"]
    assert {"LatencyRegression", "RolledBack"} <= {e["reason"] for e in events if e["type"] == "Warning"}
    assert serving(served_v1) == ("v1", ["v1"])
    # Both versions answered live requests during the analysis (v1 as the baseline).
    assert load.versions.get("slow", 0) > 0 and load.versions["v1"] - before.get("v1", 0) > 150, load.versions
    assert load.failed == 0, load.errors[:3]


def test_slower_version_is_rolled_back_on_p99_before_after(served_v1, workdir, s3, signing_key):
    """`--baseline-fraction 0` (analysis.baseline.fraction: 0): the candidate is compared with v1's
    figures from just before the swap."""
    priv, pub = signing_key
    d = artifact(workdir, "slow-ba", lambda p: models.scorer(p, seed=0, slow_layers=40), sign_key=priv)
    src = s3.upload(d, "fraud/slow-ba")
    with Load(served_v1) as load:
        time.sleep(1.0)
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "slow-ba", *ANALYSIS,
                                              "--baseline-fraction", "0", keys=[pub])
        time.sleep(0.3)
    assert code == 2, p.stderr[-3000:]
    assert report["verdict"] == "RolledBack" and report["reason"] == "LatencyRegression", report
    f = report["figures"]
    assert f["requests"] >= 150 and "baselineP99" in f and "latencyRatio" not in f, f
    # The judged percentile (p90 below 1,000 requests, else p99) moved past maxP99Ratio 2. Only
    # that one is compared: below 1,000 requests the baseline's p99 is a handful of samples, and
    # one scheduling hiccup on a loaded machine can put it above the slow version's.
    m = re.match(r"(p90|p99) [0-9.]+ ms is ([0-9.]+)× the previous version's", report["message"])
    assert m and float(m.group(2)) >= 2.0, report["message"]  # printed to 2 decimals: 2.0003 reads 2.00
    if m.group(1) == "p99":
        assert f["p99"] > 2.0 * f["baselineP99"], f
    assert serving(served_v1) == ("v1", ["v1"])
    assert load.failed == 0, load.errors[:3]


def test_without_auto_rollback_a_regression_is_its_own_verdict(served_v1, workdir, s3, signing_key):
    """autoRollback: false must not read as a pass: the watcher keeps the slower version serving
    and reports Regressed (exit 4), which the operator turns into RolloutStopped."""
    priv, pub = signing_key
    d = artifact(workdir, "slow-kept", lambda p: models.scorer(p, seed=0, slow_layers=40), sign_key=priv)
    src = s3.upload(d, "fraud/slow-kept")
    with Load(served_v1) as load:
        time.sleep(1.0)
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "slow-kept", *ANALYSIS,
                                              "--no-auto-rollback", keys=[pub])
    assert code == 4, p.stderr[-3000:]
    assert report["verdict"] == "Regressed" and report["reason"] == "LatencyRegression", report
    assert "autoRollback is off" in report["message"] and "rollout stops" in report["message"]
    assert any(e["reason"] == "LatencyRegression" and e["type"] == "Warning" for e in events)
    assert serving(served_v1)[0] == "slow-kept"
    assert load.failed == 0, load.errors[:3]
    # A watcher restarted with that report finds the version serving and keeps the verdict: a
    # regression it kept is never reported as passed.
    code, again, _, p = run_watcher(served_v1, workdir, s3, src, "slow-kept", *ANALYSIS, "--no-auto-rollback",
                                    "--last-report", json.dumps(report), keys=[pub])
    assert code == 4 and again["verdict"] == "Regressed", (again, p.stderr[-2000:])


def test_clients_mistakes_do_not_roll_back_a_good_version(served_v1, workdir, s3, signing_key):
    """~7% malformed requests and requests with a 1 µs client deadline during the analysis:
    they are counted as errors but not as the server's, so a good version is kept."""
    priv, pub = signing_key
    d = artifact(workdir, "good-noisy", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv)
    src = s3.upload(d, "fraud/good-noisy")
    stop = threading.Event()
    sent = {"bad": 0, "late": 0}

    def noise():
        import requests
        s = requests.Session()
        url = served_v1.url("/v2/models/fraud/infer")
        while not stop.is_set():
            # A well-formed request for an output the model does not have: the client's mistake.
            s.post(url, json={"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}],
                              "outputs": [{"name": "logits"}]})
            sent["bad"] += 1
            s.post(url, json={"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}],
                              "parameters": {"timeout": 1}})
            sent["late"] += 1
            time.sleep(0.07)

    with Load(served_v1) as load:
        t = threading.Thread(target=noise)
        t.start()
        time.sleep(1.0)
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "good-noisy", *ANALYSIS, keys=[pub])
        stop.set()
        t.join()
    assert code == 0 and report["verdict"] == "Passed", (report, p.stderr[-2000:])
    assert sent["bad"] > 20, sent
    _, stats = served_v1.admin("GET", "/admin/stats")
    st = stats["versions"]["good-noisy"]["stats"]
    assert st["errors"] > 0 and st["server_errors"] == 0, st
    assert st["error_rate"] > 0.01 >= st["server_error_rate"], st
    assert load.failed == 0, load.errors[:3]


def test_a_runtime_crash_during_analysis_fails_the_candidate(start, workdir, s3, signing_key):
    """SIGKILL of the runtime while a version is analysed: the restarted runtime has lost the
    candidate, which counts as failed (RuntimeCrashed, rolled back) and never serves again; the
    last judged version serves."""
    priv, pub = signing_key
    v1 = models.scorer(workdir / "scorer-v1-crash.onnx", seed=0)
    rt = start(v1, "fraud", version="v1")
    d = artifact(workdir, "crashy", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv)
    src = s3.upload(d, "fraud/crashy")
    args = watcher_args(rt, workdir, s3, src, "crashy", "--golden", "golden.npz", "--window", "60s",
                        "--min-requests", "100000", keys=[pub])
    with Load(rt, rate=200):
        time.sleep(0.5)
        w = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while serving(rt)[0] != "crashy":
            assert time.time() < deadline and w.poll() is None, w.stderr.read()[-2000:] if w.poll() else ""
            time.sleep(0.1)
        time.sleep(0.5)  # analysing now
        rt.crash_and_restart()
        out, err = w.communicate(timeout=60)
    reports = [json.loads(x)["report"] for x in out.splitlines() if x.startswith('{"report"')]
    events = [json.loads(x)["event"] for x in out.splitlines() if x.startswith('{"event"')]
    assert w.returncode == 2, err[-3000:]
    last = reports[-1]
    assert last["verdict"] == "RolledBack" and last["reason"] == "RuntimeCrashed", last
    assert {"RuntimeCrashed", "RolledBack"} <= {e["reason"] for e in events}
    assert serving(rt) == ("v1", ["v1"])


def test_a_watcher_killed_mid_analysis_judges_the_version_again(served_v1, workdir, s3, signing_key):
    """SIGKILL of the watcher while a slower version is analysed: the version serves but was never
    judged. The next run, given the report the pod kept (--last-report, what cluster mode reads
    from kinfer.dev/analysis), judges it again and rolls it back — it never reports Passed."""
    priv, pub = signing_key
    d = artifact(workdir, "slow-resumed", lambda p: models.scorer(p, seed=0, slow_layers=40), sign_key=priv)
    src = s3.upload(d, "fraud/slow-resumed")
    undecided = ["--golden", "golden.npz", "--window", "60s", "--min-requests", "1000000"]
    with Load(served_v1) as load:
        time.sleep(1.0)
        # First run: an analysis that cannot decide (it needs more requests than will come).
        w = subprocess.Popen(watcher_args(served_v1, workdir, s3, src, "slow-resumed", *undecided, keys=[pub]),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        last = None
        deadline = time.time() + 60
        for line in iter(w.stdout.readline, ""):
            if line.startswith('{"report"'):
                last = json.loads(line)["report"]
                if last["phase"] == "Analysing":
                    break
            assert time.time() < deadline
        w.kill()
        w.wait()
        assert last and last["phase"] == "Analysing" and serving(served_v1)[0] == "slow-resumed", last
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "slow-resumed", *ANALYSIS,
                                              "--last-report", json.dumps(last), keys=[pub])
        time.sleep(0.3)
    assert code == 2, p.stderr[-3000:]
    assert report["verdict"] == "RolledBack" and report["reason"] == "LatencyRegression", report
    assert serving(served_v1)[0] == "v1"
    assert load.failed == 0, load.errors[:3]


class AdminProxy:
    """A Unix-socket proxy in front of the runtime's admin socket that loses rollbacks: the
    first rollback request never reaches the runtime, the second reaches it but its answer is
    never sent back. Every other call passes through."""

    def __init__(self, upstream, path):
        import socket
        self.upstream, self.path, self.rollbacks = upstream, str(path), []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _read_message(conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _serve(self):
        import socket
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = self._read_message(conn)
                if request.startswith(b"POST /admin/rollback"):
                    self.rollbacks.append(request)
                    if len(self.rollbacks) == 1:
                        continue  # the request is lost
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                    up.connect(self.upstream)
                    up.sendall(request)
                    answer = self._read_message(up)
                if request.startswith(b"POST /admin/rollback") and len(self.rollbacks) == 2:
                    continue  # done by the runtime, the answer is lost
                conn.sendall(answer)

    def close(self):
        self.sock.close()


def test_a_lost_rollback_answer_is_asked_again_and_the_judged_version_serves(served_v1, workdir, s3, signing_key):
    """The rollback of a slower version loses its request once and its answer once (a proxy on
    the admin socket): the watcher asks again until the runtime confirms, and the version it was
    compared with serves — the idempotent rollback never swaps the regression back in."""
    priv, pub = signing_key
    d = artifact(workdir, "slow-lost", lambda p: models.scorer(p, seed=0, slow_layers=40), sign_key=priv)
    src = s3.upload(d, "fraud/slow-lost")
    proxy = AdminProxy(served_v1.socket, workdir / f"proxy-{served_v1.http_port}.sock")
    args = watcher_args(served_v1, workdir, s3, src, "slow-lost", *ANALYSIS, keys=[pub], socket=proxy.path)
    try:
        with Load(served_v1) as load:
            time.sleep(1.0)
            p = subprocess.run(args, capture_output=True, text=True, timeout=120)
            time.sleep(0.3)
    finally:
        proxy.close()
    reports = [json.loads(x)["report"] for x in p.stdout.splitlines() if x.startswith('{"report"')]
    assert p.returncode == 2, p.stderr[-3000:]
    assert reports[-1]["verdict"] == "RolledBack" and reports[-1]["reason"] == "LatencyRegression", reports[-1]
    assert "rollback failed" not in reports[-1]["message"], reports[-1]
    assert len(proxy.rollbacks) == 3, len(proxy.rollbacks)
    assert serving(served_v1) == ("v1", ["v1"])
    assert load.failed == 0, load.errors[:3]


class SlowTcp:
    """A loopback TCP proxy that passes what the server sends at `rate` bytes/s."""

    def __init__(self, upstream_port, rate):
        import socket
        self.upstream_port, self.rate = upstream_port, rate
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _pump(self, src, dst, slow):
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                dst.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def _serve(self):
        import socket
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(conn, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, True), daemon=True).start()

    def close(self):
        self.sock.close()


def test_a_watcher_killed_mid_download_leaves_nothing_half_used(served_v1, workdir, s3, signing_key):
    """SIGKILL of the watcher while a 24 MB artifact trickles in: the old version keeps serving,
    only a .partial-* directory is left; the next run deletes it, fetches the artifact whole,
    verifies and judges it, and the version serves."""
    priv, pub = signing_key
    d = artifact(workdir, "big", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv,
                 extra={"vocabulary.bin": os.urandom(24 << 20)})
    src = s3.upload(d, "fraud/big")
    slow = SlowTcp(s3.port, rate=4 << 20)
    models_dir = workdir / f"models-{served_v1.http_port}"
    args = watcher_args(served_v1, workdir, s3, src, "big", *ANALYSIS, keys=[pub], endpoint=slow.endpoint)
    try:
        with Load(served_v1) as load:
            time.sleep(1.0)
            w = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while True:
                partial = [f for p in models_dir.glob(".partial-*") for f in p.iterdir()]
                if any(f.stat().st_size > (1 << 20) for f in partial):
                    break
                assert time.time() < deadline and w.poll() is None, "no download in progress"
                time.sleep(0.05)
            w.kill()
            w.wait()
            assert list(models_dir.glob(".partial-*")), "the killed download left its partial directory"
            assert not [p for p in models_dir.glob("sha256-*") if (p / "vocabulary.bin").exists()]
            assert serving(served_v1) == ("v1", ["v1"])
            code, report, events, p = run_watcher(served_v1, workdir, s3, src, "big", *ANALYSIS, keys=[pub])
            time.sleep(0.3)
    finally:
        slow.close()
    assert code == 0, p.stderr[-3000:]
    assert report["verdict"] == "Passed", report
    assert serving(served_v1)[0] == "big"
    assert not list(models_dir.glob(".partial-*")), "the next run removed the partial download"
    fetched = [p for p in models_dir.glob("sha256-*") if (p / "vocabulary.bin").exists()]
    assert len(fetched) == 1 and (fetched[0] / "vocabulary.bin").stat().st_size == 24 << 20
    assert load.failed == 0, load.errors[:3]


def test_an_artifact_larger_than_allowed_is_refused_before_download(served_v1, workdir, s3, signing_key):
    """--max-artifact-bytes (in a pod: a third of the models volume): a 24 MB artifact against a
    1 MB limit is refused from its listing (ArtifactTooLarge, exit 3), nothing is downloaded and
    the serving version is untouched."""
    priv, pub = signing_key
    d = artifact(workdir, "huge", lambda p: models.scorer(p, seed=0), sign_key=priv,
                 extra={"weights.bin": os.urandom(24 << 20)})
    src = s3.upload(d, "fraud/huge")
    models_dir = workdir / f"models-{served_v1.http_port}"
    before = {p.name for p in models_dir.glob("*")} if models_dir.exists() else set()
    code, report, events, p = run_watcher(served_v1, workdir, s3, src, "huge", *ANALYSIS,
                                          "--max-artifact-bytes", str(1 << 20), keys=[pub])
    assert code == 3, p.stderr[-3000:]
    assert report["verdict"] == "Refused" and report["reason"] == "ArtifactTooLarge", report
    assert "more than the 1048576 bytes" in report["message"], report
    assert {p.name for p in models_dir.glob("*")} == before, "nothing was downloaded"
    assert serving(served_v1) == ("v1", ["v1"])


def test_drifting_version_is_rolled_back_on_drift(served_v1, workdir, s3, signing_key):
    priv, pub = signing_key
    d = artifact(workdir, "drift", lambda p: models.scorer(p, seed=0, logit_shift=4.0), sign_key=priv)
    src = s3.upload(d, "fraud/drift")
    with Load(served_v1) as load:
        time.sleep(1.0)
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "drift", *ANALYSIS, keys=[pub])
    assert code == 2, p.stderr[-3000:]
    assert report["verdict"] == "RolledBack" and report["reason"] == "DriftDetected", report
    # Judged on the pairs: the two versions' decisions on the same inputs.
    assert "requests run on both" in report["message"], report["message"]
    assert report["figures"]["disagreement"] > 0.05 and report["figures"]["drift"] > 0.2, report
    assert serving(served_v1)[0] == "v1"
    assert load.failed == 0, load.errors[:3]


def test_tampered_and_unsigned_artifacts(served_v1, workdir, s3, signing_key):
    priv, pub = signing_key
    d = artifact(workdir, "tampered", base, sign_key=priv, tamper=True)
    src = s3.upload(d, "fraud/tampered")
    code, report, events, _ = run_watcher(served_v1, workdir, s3, src, "tampered", *ANALYSIS, keys=[pub])
    assert code == 3 and report["reason"] == "SignatureInvalid", report
    assert "model.onnx" in report["message"]
    # Unsigned: refused when signatures are required, served with a Warning when allowed.
    d = artifact(workdir, "unsigned", base)
    src = s3.upload(d, "fraud/unsigned")
    code, report, _, _ = run_watcher(served_v1, workdir, s3, src, "unsigned", *ANALYSIS, keys=[pub])
    assert code == 3 and report["reason"] == "SignatureInvalid" and "no signature bundle" in report["message"]
    assert serving(served_v1)[0] == "v1"
    code, report, events, _ = run_watcher(served_v1, workdir, s3, src, "unsigned", "--golden", "golden.npz",
                                          "--min-requests", "0", "--window", "0s", "--allow-unsigned")
    assert code == 0 and report["verdict"] == "Passed", report
    assert any(e["reason"] == "Unsigned" and e["type"] == "Warning" for e in events)
    assert serving(served_v1)[0] == "unsigned"


def test_wrong_credentials_is_a_clear_error(served_v1, workdir, s3, signing_key):
    bad = workdir / "bad.env"
    bad.write_text(f"AWS_ACCESS_KEY_ID={AK}\nAWS_SECRET_ACCESS_KEY=wrong-secret\n")
    code, report, events, _ = run_watcher(served_v1, workdir, s3, f"s3://{BUCKET}/fraud/good/", "good2",
                                          "--fetch-timeout", "2s", creds=bad, keys=[signing_key[1]])
    assert code == 3 and report["reason"] == "FetchFailed", report
    assert any(k in report["message"] for k in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")), report
    assert any(e["reason"] == "FetchFailed" for e in events)
    assert serving(served_v1)[0] == "v1"


def test_s3_outage_during_a_rollout_keeps_serving_and_recovers(start, workdir, signing_key):
    priv, pub = signing_key
    store = S3(workdir)
    try:
        d = artifact(workdir, "outage", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv)
        src = store.upload(d, "fraud/outage")
        rt = start(models.scorer(workdir / "scorer-v1.onnx", seed=0), "fraud", version="v1")
        store.stop()
        args = [str(WATCHER), "run", "--admin-socket", rt.socket, "--models-dir", str(workdir / "models-outage"),
                "--source", src, "--endpoint", store.endpoint, "--credentials-file", str(store.creds),
                "--version", "outage", "--public-key", str(pub), "--golden", "golden.npz",
                "--min-requests", "0", "--window", "0s", "--fetch-timeout", "120s", *NO_LATENCY_VERDICT]
        with Load(rt, rate=100) as load:
            w = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            lines = []
            reader = threading.Thread(target=lambda: lines.extend(iter(w.stdout.readline, "")), daemon=True)
            reader.start()

            def reports():
                return [json.loads(x)["report"] for x in list(lines) if x.startswith('{"report"')]

            # The watcher reports the failing store and keeps retrying; the runtime keeps serving.
            deadline = time.time() + 60
            while not any(r.get("reason") == "FetchFailed" and r["phase"] == "Fetching" for r in reports()):
                assert time.time() < deadline and w.poll() is None, lines[-5:]
                time.sleep(0.2)
            assert w.poll() is None
            assert serving(rt)[0] == "v1"
            store.start()
            w.wait(timeout=120)
            reader.join(10)
        assert w.returncode == 0, [(r["phase"], r.get("verdict"), r.get("reason"), r.get("message"))
                                   for r in reports()[-3:]]
        failed = [r for r in reports() if r.get("reason") == "FetchFailed"]
        assert "retrying" in failed[0]["message"], failed[0]
        reports = reports()
        assert reports[-1]["verdict"] == "Passed"
        assert serving(rt)[0] == "outage"
        assert load.failed == 0, load.errors[:3]
        # No partial download was left behind.
        assert not list((workdir / "models-outage").glob(".partial-*"))
    finally:
        store.stop()


def test_verification_job_commands(workdir, s3, signing_key):
    """`kinfer-watcher check` and `kinfer-runtime --check`, as the ModelVersion Job runs them."""
    priv, pub = signing_key
    keydir = workdir / "keydir"
    keydir.mkdir(exist_ok=True)
    shutil.copy(pub, keydir / "release.pem")
    good = s3.upload(artifact(workdir, "job-good", base, sign_key=priv), "fraud/job-good")
    bad = s3.upload(artifact(workdir, "job-bad", base, sign_key=priv, tamper=True), "fraud/job-bad")
    mism = s3.upload(artifact(workdir, "job-mism", base, golden_from=lambda p: models.scorer(p, seed=5),
                              sign_key=priv), "fraud/job-mism")

    def check(src, dest):
        term = workdir / f"{dest}.term"
        p = subprocess.run([str(WATCHER), "check", "--source", src, "--endpoint", s3.endpoint,
                            "--credentials-file", str(s3.creds), "--public-key-dir", str(keydir),
                            "--dest", str(workdir / dest), "--termination-log", str(term)],
                           capture_output=True, text=True, timeout=120)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert json.loads(term.read_text()) == out
        return p.returncode, out

    def golden(dest):
        cur = workdir / dest / "current"
        p = subprocess.run([str(RUNTIME), "--check", "--model", str(cur / "model.onnx"), "--golden",
                            str(cur / "golden.npz"), "--atol", "1e-4", "--rtol", "1e-3",
                            "--termination-log", str(workdir / f"{dest}.rt.term")],
                           capture_output=True, text=True, timeout=120)
        return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])

    code, out = check(good, "job-good")
    assert code == 0 and out["ok"] and out["signer"].startswith("sha256:") and out["digest"].startswith("sha256:")
    # A trust policy's keys come inline (--public-key-pem NAME=PEM), as the operator writes them.
    def check_inline(pem):
        p = subprocess.run([str(WATCHER), "check", "--source", good, "--endpoint", s3.endpoint,
                            "--credentials-file", str(s3.creds), "--public-key-pem", f"release={pem}",
                            "--dest", str(workdir / "job-inline"), "--termination-log", str(workdir / "inline.term")],
                           capture_output=True, text=True, timeout=120)
        return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])
    code, inline = check_inline(pathlib.Path(pub).read_text())
    assert code == 0 and inline["signer"] == out["signer"] and inline["digest"] == out["digest"], inline
    other = workdir / "other.pub"
    subprocess.run(f"openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout -out {other}",
                   shell=True, check=True, capture_output=True)
    code, inline = check_inline(other.read_text())
    assert code == 3 and inline["reason"] == "SignatureInvalid", inline
    code, out = golden("job-good")
    assert code == 0 and out["ok"] and out["samples"] == 64 and out["agreement"] == 1.0, out
    code, out = check(bad, "job-bad")
    assert code == 3 and out == {**out, "ok": False, "reason": "SignatureInvalid"}  # refused: no retry helps
    assert not (workdir / "job-bad" / "current").exists()
    code, out = check(mism, "job-mism")
    assert code == 0
    code, out = golden("job-mism")
    assert code == 3 and not out["ok"] and out["reason"] == "NumericalMismatch" and out["maxAbsError"] > 1e-4, out


def test_an_artifact_swapped_after_verification_is_refused(served_v1, workdir, s3, signing_key):
    """Digest pinning: `check` (the verification Job's command) records the digest of what is under
    the prefix; someone with write access to the bucket then puts another artifact there, signed by
    the same key. A watcher told to serve only the recorded digest refuses it (ArtifactChanged,
    exit 3) and v1 keeps serving; with the verified bytes back the version is served."""
    priv, pub = signing_key
    verified = artifact(workdir, "pin-v2", base, sign_key=priv)
    src = s3.upload(verified, "fraud/pin-v2")
    p = subprocess.run([str(WATCHER), "check", "--source", src, "--endpoint", s3.endpoint,
                        "--credentials-file", str(s3.creds), "--public-key", str(pub),
                        "--dest", str(workdir / "pin-job"), "--termination-log", str(workdir / "pin.term")],
                       capture_output=True, text=True, timeout=120)
    recorded = json.loads(p.stdout.strip().splitlines()[-1])["digest"]
    assert p.returncode == 0 and recorded.startswith("sha256:"), p.stdout
    # An older artifact, validly signed by the same key, replaces the verified one.
    older = artifact(workdir, "pin-older", lambda q: models.scorer(q, seed=0, weight_noise=1e-3), sign_key=priv)
    s3.upload(older, "fraud/pin-v2")
    fast = ["--golden", "golden.npz", "--atol", "1e-4", "--rtol", "1e-3", "--min-requests", "0", "--window", "0s"]
    with Load(served_v1) as load:
        code, report, events, p = run_watcher(served_v1, workdir, s3, src, "pin-v2", *fast,
                                              "--expect-digest", recorded, keys=[pub])
    assert code == 3, p.stderr[-3000:]
    assert report["verdict"] == "Refused" and report["reason"] == "ArtifactChanged", report
    assert recorded in report["message"] and report["digest"] != recorded, report
    assert any(e["reason"] == "ArtifactChanged" and e["type"] == "Warning" for e in events), events
    assert serving(served_v1) == ("v1", ["v1"])
    assert load.failed == 0, load.errors[:3]
    s3.upload(verified, "fraud/pin-v2")
    code, report, _, p = run_watcher(served_v1, workdir, s3, src, "pin-v2", *fast, "--expect-digest", recorded,
                                     keys=[pub])
    assert code == 0 and report["verdict"] == "Passed" and report["digest"] == recorded, report
    assert serving(served_v1)[0] == "pin-v2"
