"""Fixtures for the runtime tier: real kinfer-runtime processes on loopback, real ONNX Runtime,
real tritonclient. Each server gets free ports and its own admin socket and is stopped after."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import models  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = pathlib.Path(os.environ.get("KINFER_RUNTIME_BIN", TARGET / "debug" / "kinfer-runtime"))


_HANDED_OUT = set()


def free_port():
    """A free loopback port, never one this test process handed out before: the kernel may give
    the same ephemeral port to two binds in a row once the first socket is closed, and a runtime
    given the same port for two listeners exits."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Runtime:
    def __init__(self, model, name, workdir, *flags, version="1"):
        self.name = name
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.socket = str(pathlib.Path(workdir) / f"admin-{self.http_port}.sock")
        args = [str(BINARY), "--listen", "127.0.0.1", "--model-name", name,
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port), "--admin-socket", self.socket,
                *([] if "--intra-op-threads" in flags else ["--intra-op-threads", "1"]), *flags]
        if model is not None:
            args += ["--model", str(model), "--model-version", version]
        self.log = open(pathlib.Path(workdir) / f"runtime-{self.http_port}.log", "w+")
        self.args = args
        self._spawn()

    def _spawn(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kinfer-runtime exited {self.proc.returncode}: {self.logs()}")
            try:
                if requests.get(self.url("/v2/health/live"), timeout=0.5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"kinfer-runtime did not start: {self.logs()}")

    def crash_and_restart(self):
        """SIGKILL, then start again with the same flags (what the kubelet does to a container)."""
        self.proc.kill()
        self.proc.wait()
        self._spawn()

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    @property
    def http(self):
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self):
        return f"127.0.0.1:{self.grpc_port}"

    def admin(self, method, path, body=None):
        """Calls the admin API over the Unix socket with curl, as a user would."""
        cmd = ["curl", "-sS", "--unix-socket", self.socket, "-X", method, "-w", "\n%{http_code}",
               f"http://localhost{path}"]
        if body is not None:
            cmd += ["-H", "content-type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        text, _, code = out.stdout.rpartition("\n")
        return int(code), (json.loads(text) if text.strip() else None)

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="kinfer-rt-") as d:
        yield pathlib.Path(d)


@pytest.fixture
def start(workdir):
    started = []

    def _start(model, name="m", *flags, version="1"):
        r = Runtime(model, name, workdir, *flags, version=version)
        started.append(r)
        return r

    yield _start
    for r in started:
        r.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def mlp_v1(workdir):
    return models.mlp(workdir / "mlp-v1.onnx", seed=0)


@pytest.fixture(scope="session")
def mlp_v2(workdir):
    return models.mlp(workdir / "mlp-v2.onnx", seed=7)
