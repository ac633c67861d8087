"""GitOps parts of the e2e suite and `make demo`: a git repository served by the local cluster's
git server (tests/e2e/cluster/flux.sh), Flux's GitRepository and Kustomization pointing at it,
and what the real health code of the tools says about a live object: kstatus (cli-utils'
status.Compute, what Flux's `wait: true` reads) and Argo CD (its Lua health evaluation with the
check kinfer ships, docs/gitops/argocd-health.lua)."""
import datetime
import json
import pathlib
import subprocess
import threading
import time

import kinfer_e2e as k
import yaml

CLUSTER_SRC = k.ROOT / "tests" / "e2e" / "cluster"
ARGOCD_HEALTH_LUA = k.ROOT / "docs" / "gitops" / "argocd-health.lua"


def _settings():
    out = subprocess.run(["bash", "-c", f"source {CLUSTER_SRC}/lib.sh; echo $GITOPS_BIN; echo $GIT_HTTP_ADDR"],
                         capture_output=True, text=True, check=True).stdout.split()
    return pathlib.Path(out[0]), out[1]


GITOPS_BIN, GIT_HTTP_ADDR = _settings()


def git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=kinfer e2e", "-c", "user.email=e2e@kinfer.local",
                           *args], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


class Repo:
    """A repository on the cluster's git server and a clone of it to commit from."""

    def __init__(self, name, workdir):
        self.url = subprocess.run(["bash", str(CLUSTER_SRC / "flux.sh"), "repo", name], capture_output=True,
                                  text=True, check=True).stdout.strip()
        self.dir = pathlib.Path(workdir) / f"git-{name}"
        if not (self.dir / ".git").exists():
            subprocess.run(["git", "clone", "-q", self.url, str(self.dir)], check=True, capture_output=True, timeout=60)
        git(self.dir, "checkout", "-q", "-B", "main")

    def commit(self, files, message):
        """Writes {path: text}, commits and pushes to main; returns the commit's sha."""
        for path, text in files.items():
            p = self.dir / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            git(self.dir, "add", path)
        git(self.dir, "commit", "-q", "--allow-empty", "-m", message)
        git(self.dir, "push", "-q", "origin", "HEAD:main")
        return git(self.dir, "rev-parse", "HEAD")

    def log(self, n=5):
        return git(self.dir, "log", "--oneline", f"-{n}")


def yaml_docs(objs):
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objs)


def flux_objects(ns, name, repo, path, timeout="10m"):
    """GitRepository + Kustomization (wait: true: kstatus health of everything it applies)."""
    return [
        {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": {"name": name, "namespace": ns},
         "spec": {"interval": "10m", "url": repo.url, "ref": {"branch": "main"}, "timeout": "60s"}},
        {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": name, "namespace": ns},
         "spec": {"interval": "10m", "retryInterval": "15s", "timeout": timeout, "path": path, "prune": False,
                  "wait": True, "sourceRef": {"kind": "GitRepository", "name": name}}},
    ]


def reconcile(ns, name):
    """What `flux reconcile kustomization NAME --with-source` does: ask both for a reconcile now."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    for kind in ("gitrepository", "kustomization"):
        k.kubectl("annotate", "--overwrite", "-n", ns, f"{kind}.{'source' if kind == 'gitrepository' else 'kustomize'}"
                  f".toolkit.fluxcd.io/{name}", f"reconcile.fluxcd.io/requestedAt={now}")


def kustomization(ns, name):
    return k.kget("kustomizations.kustomize.toolkit.fluxcd.io", name, ns)


def flux_view(ns, name):
    """One line: the Kustomization's Ready condition and the revision it applied."""
    ks = kustomization(ns, name)
    c = k.condition(ks, "Ready") or {}
    rev = ks.get("status", {}).get("lastAppliedRevision", "")
    return f"Kustomization {name}: Ready={c.get('status')} {c.get('reason')} applied={rev[-12:]}: {c.get('message', '')[:300]}"


def _run(binary, obj, *args):
    """Runs a checker on an object or a List; one {'kind','name','status','message'} per object."""
    p = subprocess.run([str(GITOPS_BIN / binary), *args], input=json.dumps(obj), capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{binary} failed: {p.stderr.strip()}")
    return [json.loads(line) for line in p.stdout.splitlines()]


def kstatus(obj):
    """kstatus's verdict (cli-utils status.Compute) on live objects, one per object of a List."""
    return _run("kstatus", obj)


def argocd(obj):
    """Argo CD's health (gitops-engine + Argo CD's Lua with kinfer's check) on live objects."""
    checks = [f"kinfer.dev/{kind}={ARGOCD_HEALTH_LUA}" for kind in ("InferenceService", "ModelVersion")]
    return _run("argocd-health", obj, *[a for c in checks for a in ("--health", c)])


# What each tool should say, by what kinfer is doing: kstatus status -> Argo CD health.
ARGOCD_FOR = {"InProgress": "Progressing", "Current": "Healthy", "Failed": "Degraded"}


def expected_kstatus(obj):
    """What kinfer means its status to say (docs/gitops.md): the status is older than the spec or
    a rollout (Verifying, Canary, Promoting, RollingBack) or pods are starting -> InProgress; held
    after a rollback or refusal, a stopped rollout, unschedulable -> Failed; serving -> Current.
    For a ModelVersion: verifying -> InProgress, refused -> Failed, validated -> Current."""
    st = obj.get("status") or {}
    if st.get("observedGeneration", 0) < obj["metadata"].get("generation", 1):
        return "InProgress"
    cond = {c["type"]: c for c in st.get("conditions", [])}
    if obj["kind"] == "ModelVersion":
        vals = [cond.get(t, {}).get("status") for t in ("Verified", "Validated")]
        return "Failed" if "False" in vals else "Current" if vals == ["True", "True"] else "InProgress"
    phase = (st.get("rollout") or {}).get("phase")
    ready = cond.get("Ready", {})
    if ready.get("reason") == "Unschedulable":
        return "Failed"
    if phase in ("Verifying", "Canary", "Promoting") and st.get("targetVersion") or phase == "RollingBack":
        return "InProgress"
    if st.get("rejectedVersion"):
        return "Failed"
    return "Current" if ready.get("status") == "True" else "InProgress"


class HealthLog:
    """Samples live objects in the background and records, for each sample, kinfer's phase,
    kstatus's and Argo CD's verdicts, so a test can check every phase the run went through."""

    def __init__(self, ns, what="inferenceservice,modelversion", interval=1.0):
        self.ns, self.what, self.interval = ns, what, interval
        self.samples = []
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - reported by the test that reads the log
                self.errors.append(repr(e))
            self._stop.wait(self.interval)

    def sample(self):
        out = k.kubectl("get", self.what, "-n", self.ns, "-o", "json", check=False)
        lst = json.loads(out) if out.strip() else {"items": []}
        if not lst.get("items"):
            return
        for obj, ks, ar in zip(lst["items"], kstatus(lst), argocd(lst), strict=True):
            st = obj.get("status") or {}
            self.samples.append({
                "kind": obj["kind"], "name": obj["metadata"]["name"], "t": time.time(),
                "generation": obj["metadata"].get("generation"), "observedGeneration": st.get("observedGeneration"),
                "phase": (st.get("rollout") or {}).get("phase"),
                "conditions": {c["type"]: (c["status"], c["reason"]) for c in st.get("conditions", [])},
                "expected": expected_kstatus(obj), "kstatus": ks["status"], "kstatusMessage": ks["message"],
                "argocd": ar["status"], "argocdMessage": ar["message"]})

    def stop(self):
        self._stop.set()
        self._t.join(timeout=30)
