"""Steady OIP v2 load from a thread, shared by the runtime tier (tests/runtime/test_watcher.py),
the e2e suite and `make demo` (tests/e2e/kinfer_e2e.py): fixed-rate single-row requests to one
model; counts answers, failures and the versions that answered."""
import json
import threading
import time

import numpy as np
import requests


class Load:
    """`with Load(url, rate) as load:` sends `rate` requests/s to `url` (an OIP infer URL) until the
    block ends. `new_connection_per_request` opens a connection for each request: a Service's
    kube-proxy balances connections, and one keep-alive connection would pin all load to one pod."""

    def __init__(self, url, rate=400, new_connection_per_request=False, seed=11):
        self.url, self.rate = url, rate
        self.ok, self.failed, self.errors, self.versions = 0, 0, [], {}
        self.headers = {"content-type": "application/json"}
        if new_connection_per_request:
            self.headers["connection"] = "close"
        rng = np.random.default_rng(seed)
        self.bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                               "data": rng.normal(size=8).astype(float).tolist()}]})
                       for _ in range(64)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)

    def _run(self):
        session = requests.Session()
        i, gap, nxt = 0, 1.0 / self.rate, time.perf_counter()
        while not self.stop.is_set():
            try:
                r = session.post(self.url, data=self.bodies[i % len(self.bodies)], timeout=5, headers=self.headers)
                if r.status_code == 200:
                    self.ok += 1
                    v = r.json().get("model_version")
                    self.versions[v] = self.versions.get(v, 0) + 1
                else:
                    self.failed += 1
                    self.errors.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                self.failed += 1
                self.errors.append(str(e)[:200])
            i += 1
            nxt += gap
            pause = nxt - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                nxt = time.perf_counter()
