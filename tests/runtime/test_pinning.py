"""CPU pinning (`--cpu-affinity auto`) on a real runtime: every thread's allowed CPUs as the
kernel reports them (/proc/<pid>/task/*/status), what `/admin/stats` says, and what a real
watcher reports from it."""
import json
import os
import pathlib
import subprocess

import requests

from conftest import BINARY, TARGET

WATCHER = pathlib.Path(os.environ.get("KINFER_WATCHER_BIN", TARGET / "debug" / "kinfer-watcher"))


def cpu_set(text):
    cpus = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def threads(pid):
    """{thread name: [allowed CPUs of each thread of that name]}."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        allowed = next(line.split(":", 1)[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
        out.setdefault((task / "comm").read_text().strip(), []).append(cpu_set(allowed))
    return out


def mine():
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, f"the pinning tests need 2 CPUs, this process has {cpus}"
    return cpus


def pinning(rt):
    code, stats = rt.admin("GET", "/admin/stats")
    assert code == 200
    return stats["cpuPinning"]


def test_each_instance_worker_gets_a_cpu_of_its_own_and_tokio_stays_on_all(start, mlp_v1):
    cpus = mine()[:2]
    rt = start(mlp_v1, "m", "--cpu-affinity", "auto", "--instances", "2")
    t = threads(rt.proc.pid)
    assert t["ort-1-0"] == [{cpus[0]}] and t["ort-1-1"] == [{cpus[1]}], t
    # The network threads are not pinned: each may run on every CPU of the process.
    assert all(s == set(mine()) for name, sets in t.items() if not name.startswith("ort-") for s in sets), t
    p = pinning(rt)
    assert p["exclusive"] and not p["sharedThreads"] and p["needed"] == 2, p
    # Pinned, it answers as before.
    for _ in range(20):
        r = requests.post(rt.url("/v2/models/m/infer"), timeout=5, json={
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]})
        assert r.status_code == 200, r.text


def test_one_worker_and_its_ort_thread_one_per_cpu(start, mlp_v1):
    cpus = mine()[:2]
    rt = start(mlp_v1, "m", "--cpu-affinity", "auto", "--intra-op-threads", "2")
    t = threads(rt.proc.pid)
    assert t["ort-1-0"] == [{cpus[0]}], t
    # ORT's one extra intra-op thread, pinned by ORT to the second CPU; nothing else is.
    pinned_second = [name for name, sets in t.items() for s in sets if s == {cpus[1]}]
    assert len(pinned_second) == 1, t
    assert "pinned one per CPU" in pinning(rt)["message"]


def test_more_threads_than_cpus_share_them_and_say_what_to_change(start, mlp_v1):
    n = len(mine())
    rt = start(mlp_v1, "m", "--cpu-affinity", "auto", "--instances", str(n + 1))
    p = pinning(rt)
    assert p["exclusive"] and p["sharedThreads"], p
    assert f"at most {n}" in p["message"] and f"at most {n}" in rt.logs(), p
    t = threads(rt.proc.pid)
    assert all(len(s) == 1 for i in range(n + 1) for s in t[f"ort-1-{i}"]), t


def test_a_cpuset_larger_than_the_pods_is_the_shared_pool_pinned_nowhere_and_the_watcher_says_so(start, mlp_v1, workdir):
    allowed = set(mine())
    rt = start(mlp_v1, "m", "--cpu-affinity", "auto", "--exclusive-cpus", "1")
    t = threads(rt.proc.pid)
    assert all(s == allowed for sets in t.values() for s in sets), t
    p = pinning(rt)
    assert not p["exclusive"] and p["needed"] == 1, p
    assert "shared CPU pool" in p["message"] and "asked for 1 CPU(s)" in p["message"], p
    assert "shared CPU pool" in rt.logs()
    # The watcher copies what the runtime said (in a pod, into the kinfer.dev/CpuPinned
    # condition; standalone, as a JSON line), before it fetches anything.
    out = subprocess.run([str(WATCHER), "run", "--admin-socket", rt.socket, "--models-dir", str(workdir / "pin-models"),
                          "--source", "s3://nowhere/m", "--endpoint", "http://127.0.0.1:9", "--version", "v2",
                          "--fetch-timeout", "2s", "--allow-unsigned"], capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    said = [line["cpuPinning"] for line in lines if "cpuPinning" in line]
    assert said == [p], out.stdout[-2000:] + out.stderr[-2000:]


def test_unpinned_runtimes_say_nothing_about_pinning(start, mlp_v1):
    rt = start(mlp_v1, "m")
    code, stats = rt.admin("GET", "/admin/stats")
    assert code == 200 and stats["cpuPinning"] is None
    assert all(s == set(mine()) for sets in threads(rt.proc.pid).values() for s in sets)


def test_exclusive_cpus_without_pinning_is_refused(workdir, mlp_v1):
    p = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--exclusive-cpus", "2", "--admin-socket", str(workdir / "x.sock")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "--exclusive-cpus describes pinning" in p.stderr, p.stderr[-1000:]
