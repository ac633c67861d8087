//! Helpers for the integration tier against a real kube-apiserver (started by
//! tests/operator/run.sh): a random namespace per test, the operator binary as a child process,
//! pods that stand for the Deployment's pods (there is no controller-manager or node), and
//! polling with a deadline.

#![allow(dead_code)] // each test binary uses a different subset

mod objects;
pub use objects::*;

use std::{
    future::Future,
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// A client from `KUBECONFIG`.
pub async fn client() -> Client {
    Client::try_default()
        .await
        .expect("KUBECONFIG must point at the test API server (run tests/operator/run.sh)")
}

/// Creates a namespace with a random name.
pub async fn temp_ns(c: &Client, prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("{prefix}-{:x}{:x}", nanos, std::process::id() & 0xfff);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

/// Deletes a namespace (best effort: without a controller-manager it stays Terminating, which is
/// harmless in a throwaway API server).
pub async fn drop_ns(c: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(c.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator binary running as a child process; killed on drop.
pub struct Operator {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:<port>` of its metrics server.
    pub metrics_addr: String,
    /// Where its log goes.
    pub log: std::path::PathBuf,
}

impl Operator {
    /// Starts `kinfer-operator` watching `ns` with extra flags.
    pub fn start(ns: &str, name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("kinfer-operator-{ns}-{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let mut args = vec![
            "--watch-namespace",
            ns,
            "--metrics-addr",
            &metrics_addr,
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        if !extra.iter().any(|a| a.starts_with("--leader-elect")) {
            args.push("--leader-elect=false");
        }
        let child = Command::new(env!("CARGO_BIN_EXE_kinfer-operator"))
            .args(&args)
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("start kinfer-operator");
        Self {
            child,
            metrics_addr,
            log,
        }
    }

    /// `GET /metrics` (empty when not up yet).
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics").unwrap_or_default()
    }

    /// The value of a metric line that starts with `series` (e.g. `kinfer_rollbacks_total`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// The sum of every series of a metric family with the given label filter text.
    pub fn reconciles(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("kinfer_reconcile_total{kind=\"InferenceService\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny blocking HTTP GET.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Creates a Pod standing for one of the Deployment's pods (same labels); it stays Pending
/// because there is no node. Returns its name.
pub async fn serving_pod(c: &Client, ns: &str, isvc: &str, name: &str, version: &str) -> String {
    let rs_uid = serving_replica_set(c, ns, isvc).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "kinfer",
                "kinfer.dev/inferenceservice": isvc,
                "pod-template-hash": "test",
            },
            "annotations": {"kinfer.dev/serving-version": version},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{isvc}-test"),
                                 "uid": rs_uid, "controller": true}],
        },
        "spec": {"containers": [{"name": "runtime", "image": "kinfer.local/none:0"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    name.to_owned()
}

/// What the controller manager (absent in this tier) would have made: the service's
/// Deployment, when the operator has not applied it yet (the operator's apply takes it over, the
/// uid stays), and a ReplicaSet it controls, whose uid a serving pod's controller reference
/// names. Returns the ReplicaSet's uid.
pub async fn serving_replica_set(c: &Client, ns: &str, isvc: &str) -> String {
    let labels = json!({"app.kubernetes.io/name": "kinfer", "kinfer.dev/inferenceservice": isvc});
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
    let dep = match deployments.get_opt(isvc).await.unwrap() {
        Some(d) => d,
        None => {
            let d: Deployment = serde_json::from_value(json!({
                "metadata": {"name": isvc},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": "runtime", "image": "kinfer.local/none:0"}]}}}
            }))
            .unwrap();
            deployments
                .create(&PostParams::default(), &d)
                .await
                .unwrap()
        }
    };
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), ns);
    let rs_name = format!("{isvc}-test");
    if let Some(rs) = sets.get_opt(&rs_name).await.unwrap() {
        return rs.metadata.uid.unwrap();
    }
    let mut rs_labels = labels.clone();
    rs_labels["pod-template-hash"] = json!("test");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": rs_name, "labels": rs_labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": isvc,
                                          "uid": dep.metadata.uid.unwrap(), "controller": true}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": rs_labels},
                 "template": {"metadata": {"labels": rs_labels},
                              "spec": {"containers": [{"name": "runtime", "image": "kinfer.local/none:0"}]}}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &rs)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// Writes annotations on a pod as the watcher does (merge patch).
pub async fn annotate_pod(c: &Client, ns: &str, pod: &str, ann: serde_json::Value) {
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": ann}})),
        )
        .await
        .unwrap();
}

/// A pod's annotation.
pub async fn pod_annotation(c: &Client, ns: &str, pod: &str, key: &str) -> Option<String> {
    Api::<Pod>::namespaced(c.clone(), ns)
        .get(pod)
        .await
        .ok()?
        .metadata
        .annotations?
        .get(key)
        .cloned()
}
