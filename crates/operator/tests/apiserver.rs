//! The operator against a real kube-apiserver (tests/operator/run.sh starts one: etcd +
//! kube-apiserver, no controller-manager, no node). Each test runs in its own random namespace
//! with its own `kinfer-operator` process. Pods that stand for the Deployment's pods are created
//! by the tests, and the watcher's reports are written on them as the watcher writes them.
//!
//! Run with `tests/operator/run.sh` (`make test-operator`); plain `cargo test` skips them.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kinfer_api::{InferenceService, ModelVersion, conditions};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const T: Duration = Duration::from_secs(30);

async fn spec_version(c: &Client, ns: &str, name: &str, v: &str) {
    Api::<InferenceService>::namespaced(c.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"modelVersion": v}})),
        )
        .await
        .unwrap();
}

fn report(version: &str, verdict: &str, reason: Option<&str>) -> String {
    let mut r = json!({
        "version": version, "previousVersion": "fraud-v1", "phase": "Done", "verdict": verdict,
        "figures": {"p99": 0.02, "baselineP99": 0.001, "errorRate": 0.0, "requests": 500},
        "updated": "2026-01-01T00:00:00Z"
    });
    if let Some(x) = reason {
        r["reason"] = json!(x);
        r["message"] = json!("p99 20.0ms is over 1.5 x the baseline 1.0ms");
    }
    r.to_string()
}

async fn wait_target(c: &Client, ns: &str, pod: &str, v: &str) {
    wait_for(&format!("pod {pod} to be asked for {v}"), T, || async {
        (pod_annotation(c, ns, pod, "kinfer.dev/target-version")
            .await
            .as_deref()
            == Some(v))
        .then_some(())
    })
    .await;
}

/// Makes the operator reconcile `fraud` once more (an annotation `test/poke: value`) and gives
/// whatever it does a second to land.
async fn reconcile_and_settle(c: &Client, ns: &str, op: &Operator, value: &str) {
    let n = op.reconciles();
    patch_isvc(
        c,
        ns,
        "fraud",
        json!({"metadata": {"annotations": {"test/poke": value}}}),
    )
    .await;
    wait_for("a reconcile", T, || async {
        (op.reconciles() > n).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// All resourceVersions of the objects an InferenceService owns, and its own.
async fn resource_versions(c: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    macro_rules! rv {
        ($t:ty, $n:expr) => {
            (
                format!("{} {}", stringify!($t), $n),
                Api::<$t>::namespaced(c.clone(), ns)
                    .get($n)
                    .await
                    .unwrap()
                    .resource_version()
                    .unwrap(),
            )
        };
    }
    let w = format!("{name}-watcher");
    vec![
        rv!(Deployment, name),
        rv!(Service, name),
        rv!(PodDisruptionBudget, name),
        rv!(ServiceAccount, &w),
        rv!(Role, &w),
        rv!(RoleBinding, &w),
        rv!(ConfigMap, &format!("{name}-policy")),
        rv!(InferenceService, name),
    ]
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn reconciles_owned_objects_status_and_a_second_reconcile_writes_nothing() {
    let c = client().await;
    let ns = temp_ns(&c, "op-apply").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    let created = create_isvc(
        &c,
        &ns,
        "fraud",
        json!({"modelVersion": "fraud-v1", "replicas": 3,
               "resources": {"cpu": "2", "memory": "1Gi"},
               "policy": {"output": "score", "thresholds": [{"min": 0.9, "label": "block"}]}}),
    )
    .await;
    // Before the operator has seen it, the status (defaulted to observedGeneration 0 by the CRD)
    // is older than the spec: kstatus must not read a brand-new service as Current.
    let unseen = isvc(&c, &ns, "fraud").await;
    assert_eq!(unseen.status.as_ref().unwrap().observed_generation, Some(0));
    assert_eq!(kstatus(&unseen), "InProgress");
    let op = Operator::start(&ns, "op", &[]);

    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let d = wait_for("the Deployment", T, || async {
        deps.get_opt("fraud").await.ok().flatten()
    })
    .await;
    // The operator applies every owned object at once (only the Role before its RoleBinding) and
    // writes the status after all of them: once the status is written, every object exists.
    wait_for(
        "the status, written after every owned object",
        T,
        || async {
            (isvc(&c, &ns, "fraud").await.status?.observed_generation == Some(1)).then_some(())
        },
    )
    .await;
    assert_eq!(d.owner_references()[0].uid, created.uid().unwrap());
    assert_eq!(d.owner_references()[0].controller, Some(true));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let t = &spec.template;
    let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["kinfer.dev/model"], "fraud");
    assert_eq!(labels["kinfer.dev/inferenceservice"], "fraud");
    let p = t.spec.as_ref().unwrap();
    let names: Vec<_> = p.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["runtime", "watcher"]);
    assert_eq!(
        p.readiness_gates.as_ref().unwrap()[0].condition_type,
        "kinfer.dev/ModelReady"
    );
    assert_eq!(p.service_account_name.as_deref(), Some("fraud-watcher"));
    for ctr in &p.containers {
        let s = ctr.security_context.as_ref().unwrap();
        assert_eq!(s.read_only_root_filesystem, Some(true));
        assert_eq!(s.allow_privilege_escalation, Some(false));
        assert_eq!(
            s.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
    }
    let managers: Vec<_> = d
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("kinfer-operator".into(), "Apply".into())),
        "{managers:?}"
    );

    let svc = Api::<Service>::namespaced(c.clone(), &ns)
        .get("fraud")
        .await
        .unwrap();
    let ports: Vec<_> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 8081, 9090]);
    let pdb = Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns)
        .get("fraud")
        .await
        .unwrap();
    assert!(pdb.spec.unwrap().max_unavailable.is_some());
    let role = Api::<Role>::namespaced(c.clone(), &ns)
        .get("fraud-watcher")
        .await
        .unwrap();
    assert!(role.rules.unwrap().iter().any(|r| {
        r.resources
            .as_ref()
            .unwrap()
            .contains(&"pods/status".to_string())
    }));
    let rb = Api::<RoleBinding>::namespaced(c.clone(), &ns)
        .get("fraud-watcher")
        .await
        .unwrap();
    assert_eq!(rb.subjects.unwrap()[0].name, "fraud-watcher");
    Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .get("fraud-watcher")
        .await
        .unwrap();
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("fraud-policy")
        .await
        .unwrap();
    assert!(cm.data.unwrap()["policy.yaml"].contains("block"));

    // Status before any pod serves: verified, but servingVersion names only what a pod serves.
    let i = wait_for("the first version awaited", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (i.status.as_ref()?.target_version.as_deref() == Some("fraud-v1")
            && cond(&i, "Ready").is_some())
        .then_some(i)
    })
    .await;
    assert_eq!(i.status.as_ref().unwrap().serving_version, None);
    assert_eq!(
        cond(&i, "Ready").unwrap(),
        ("False".into(), "NoServingVersion".into())
    );
    assert_eq!(
        cond(&i, "Progressing").unwrap(),
        ("True".into(), "Promoting".into())
    );
    assert_eq!(
        cond(&i, "Reconciling").unwrap(),
        ("True".into(), "Promoting".into())
    );
    assert_eq!(kstatus(&i), "InProgress");

    // The pods' watchers load it: the first version serves; no pod is ready yet.
    for n in ["p-0", "p-1", "p-2"] {
        serving_pod(&c, &ns, "fraud", n, "fraud-v1").await;
    }
    let i = wait_for("status.servingVersion", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (i.status.as_ref()?.serving_version.as_deref() == Some("fraud-v1")
            && cond(&i, "Ready").is_some())
        .then_some(i)
    })
    .await;
    let st = i.status.as_ref().unwrap();
    assert_eq!(
        cond(&i, "Ready").unwrap(),
        ("False".into(), "PodsNotReady".into())
    );
    assert_eq!(cond(&i, "Progressing").unwrap().0, "False");
    assert_eq!(
        cond(&i, "Reconciling").unwrap(),
        ("True".into(), "PodsNotReady".into())
    );
    assert_eq!(kstatus(&i), "InProgress");
    assert_eq!(
        cond(&i, "RolledBack").unwrap(),
        ("False".into(), "NoRollback".into())
    );
    assert_eq!(st.observed_generation, Some(1));
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    assert_eq!(st.ready.as_deref(), Some("0/3"));
    assert_eq!(st.endpoints["http"], format!("http://fraud.{ns}.svc:8080"));

    // The Deployment controller's part, by hand: three pods ready → Ready=True.
    deps.patch_status(
        "fraud",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 3}})),
    )
    .await
    .unwrap();
    let i = wait_for("Ready=True", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (cond(&i, "Ready")? == ("True".into(), "Serving".into())
            && i.status.as_ref()?.ready.as_deref() == Some("3/3"))
        .then_some(i)
    })
    .await;
    assert_eq!(cond(&i, "Reconciling").unwrap().0, "False");
    assert_eq!(cond(&i, "Stalled").unwrap().0, "False");
    assert_eq!(kstatus(&i), "Current");

    // A second reconcile writes nothing: poke the InferenceService (an annotation: a reconcile
    // but no spec change) and compare every resourceVersion once it ran.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_count = op.reconciles();
    patch_isvc(
        &c,
        &ns,
        "fraud",
        json!({"metadata": {"annotations": {"test/poke": "1"}}}),
    )
    .await;
    let before = resource_versions(&c, &ns, "fraud").await;
    wait_for("a reconcile after the poke", T, || async {
        (op.reconciles() > before_count).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resource_versions(&c, &ns, "fraud").await;
    assert_eq!(before, after, "a reconcile without changes must not write");
    assert!(
        op.metrics()
            .contains("kinfer_reconcile_duration_seconds_count{kind=\"InferenceService\"}")
    );
    drop_ns(&c, &ns).await;
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn rollout_marks_canaries_oldest_first_then_promotes_on_passed_verdicts() {
    let c = client().await;
    let ns = temp_ns(&c, "op-promote").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    verified_mv(&c, &ns, "fraud-v2").await;
    create_isvc(
        &c,
        &ns,
        "fraud",
        json!({"modelVersion": "fraud-v1", "replicas": 3,
        "rollout": {"canary": {"replicas": 1}}}),
    )
    .await;
    for n in ["p-0", "p-1", "p-2"] {
        serving_pod(&c, &ns, "fraud", n, "fraud-v1").await;
    }
    let op = Operator::start(&ns, "op", &[]);
    wait_for("fraud-v1 serving", T, || async {
        (isvc(&c, &ns, "fraud")
            .await
            .status?
            .serving_version
            .as_deref()
            == Some("fraud-v1"))
        .then_some(())
    })
    .await;

    let generation = Api::<Deployment>::namespaced(c.clone(), &ns)
        .get("fraud")
        .await
        .unwrap()
        .metadata
        .generation;
    // A look-alike: the service's labels, no owner, its own "target" and a RolledBack verdict
    // for the next version. The operator must not believe it.
    let evil: Pod = serde_json::from_value(json!({
        "metadata": {"name": "look-alike",
                     "labels": {"app.kubernetes.io/name": "kinfer", "kinfer.dev/inferenceservice": "fraud"},
                     "annotations": {"kinfer.dev/target-version": "fraud-v2",
                                     "kinfer.dev/serving-version": "fraud-v1",
                                     "kinfer.dev/analysis": report("fraud-v2", "RolledBack", Some("LatencyRegression"))}},
        "spec": {"containers": [{"name": "runtime", "image": "kinfer.local/none:0"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &evil)
        .await
        .unwrap();
    spec_version(&c, &ns, "fraud", "fraud-v2").await;
    wait_target(&c, &ns, "p-0", "fraud-v2").await;
    let i = wait_for("phase Canary", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (format!("{:?}", i.status.as_ref()?.rollout.as_ref()?.phase) == "Canary").then_some(i)
    })
    .await;
    let st = i.status.as_ref().unwrap();
    assert_eq!(st.rollout.as_ref().unwrap().canary_pods, ["p-0"]);
    assert_eq!(st.target_version.as_deref(), Some("fraud-v2"));
    assert_eq!(
        cond(&i, "Progressing").unwrap(),
        ("True".into(), "Canary".into())
    );
    assert_eq!(kstatus(&i), "InProgress");
    for p in ["p-1", "p-2"] {
        assert_eq!(
            pod_annotation(&c, &ns, p, "kinfer.dev/target-version").await,
            None,
            "{p} is not a canary"
        );
    }

    annotate_pod(
        &c,
        &ns,
        "p-0",
        json!({"kinfer.dev/serving-version": "fraud-v2",
        "kinfer.dev/analysis": report("fraud-v2", "Passed", None)}),
    )
    .await;
    wait_target(&c, &ns, "p-1", "fraud-v2").await;
    wait_target(&c, &ns, "p-2", "fraud-v2").await;
    for p in ["p-1", "p-2"] {
        annotate_pod(
            &c,
            &ns,
            p,
            json!({"kinfer.dev/serving-version": "fraud-v2",
            "kinfer.dev/analysis": report("fraud-v2", "Passed", None)}),
        )
        .await;
    }
    let i = wait_for("promotion", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (i.status.as_ref()?.serving_version.as_deref() == Some("fraud-v2")).then_some(i)
    })
    .await;
    let st = i.status.unwrap();
    assert_eq!(st.previous_version.as_deref(), Some("fraud-v1"));
    assert_eq!(st.target_version, None);
    assert_eq!(
        st.rejected_version, None,
        "the look-alike's verdict was not believed"
    );
    assert_eq!(format!("{:?}", st.rollout.unwrap().phase), "Idle");
    wait_for("a Promoted Event", T, || async {
        let e = events(&c, &ns, "fraud", "Promoted").await;
        e.iter()
            .any(|e| {
                e.note
                    .as_deref()
                    .unwrap_or("")
                    .contains("promoted fraud-v2")
            })
            .then_some(())
    })
    .await;
    // The Deployment template never names a version: promotion restarts nothing.
    let d = Api::<Deployment>::namespaced(c.clone(), &ns)
        .get("fraud")
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&d.spec.unwrap().template)
            .unwrap()
            .contains("fraud-v")
    );
    assert_eq!(d.metadata.generation, generation);
    wait_for("kinfer_rollouts_total{outcome=\"promoted\"}", T, || async {
        op.metrics()
            .contains("kinfer_rollouts_total{outcome=\"promoted\"}")
            .then_some(())
    })
    .await;
    drop_ns(&c, &ns).await;
}

/// A loopback webhook receiver: records each request (head + body), answers 200.
async fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = l.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= h + 4 + len {
                            s.lock().unwrap().push(text);
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn regression_rolls_back_alerts_holds_and_retries_on_request() {
    let c = client().await;
    let ns = temp_ns(&c, "op-rollback").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    verified_mv(&c, &ns, "fraud-v2").await;
    // One Secret opted in as a webhook token, one not (any other Secret of the namespace).
    for secret in [
        json!({"metadata": {"name": "alert-token", "labels": {"kinfer.dev/webhook-token": "true"}},
               "stringData": {"token": "s3cret"}}),
        json!({"metadata": {"name": "db-password"}, "stringData": {"token": "not-for-webhooks"}}),
    ] {
        let secret: Secret = serde_json::from_value(secret).unwrap();
        Api::<Secret>::namespaced(c.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let (port, seen) = receiver().await;
    create_isvc(
        &c,
        &ns,
        "fraud",
        json!({"modelVersion": "fraud-v1", "replicas": 3,
        "rollout": {"canary": {"replicas": 1}},
        "alerts": {"webhooks": [
            {"url": format!("http://127.0.0.1:{port}/api/v2/alerts"), "format": "alertmanager",
             "tokenSecret": {"name": "alert-token", "key": "token"}, "allowInsecureHttp": true},
            {"url": format!("http://127.0.0.1:{port}/slack"), "format": "slack",
             "tokenSecret": {"name": "db-password", "key": "token"}, "allowInsecureHttp": true}
        ]}}),
    )
    .await;
    for n in ["p-0", "p-1", "p-2"] {
        serving_pod(&c, &ns, "fraud", n, "fraud-v1").await;
    }
    let op = Operator::start(&ns, "op", &[]);
    wait_for("fraud-v1 serving", T, || async {
        (isvc(&c, &ns, "fraud")
            .await
            .status?
            .serving_version
            .as_deref()
            == Some("fraud-v1"))
        .then_some(())
    })
    .await;

    spec_version(&c, &ns, "fraud", "fraud-v2").await;
    wait_target(&c, &ns, "p-0", "fraud-v2").await;
    // The canary's watcher promoted v2, saw p99 regress and swapped back to v1 by itself.
    annotate_pod(
        &c,
        &ns,
        "p-0",
        json!({"kinfer.dev/serving-version": "fraud-v1",
        "kinfer.dev/analysis": report("fraud-v2", "RolledBack", Some("LatencyRegression"))}),
    )
    .await;
    wait_target(&c, &ns, "p-0", "fraud-v1").await;
    let i = wait_for("RolledBack status", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (i.status.as_ref()?.rejected_version.as_deref() == Some("fraud-v2")).then_some(i)
    })
    .await;
    let st = i.status.as_ref().unwrap();
    let ro = st.rollout.as_ref().unwrap();
    assert_eq!(format!("{:?}", ro.phase), "RolledBack");
    assert_eq!(ro.analysis.as_ref().unwrap().p99, Some(0.02));
    assert!(ro.message.as_ref().unwrap().contains("LatencyRegression"));
    assert_eq!(st.serving_version.as_deref(), Some("fraud-v1"));
    assert_eq!(
        cond(&i, "RolledBack").unwrap(),
        ("True".into(), "LatencyRegression".into())
    );
    assert_eq!(
        cond(&i, "Stalled").unwrap(),
        ("True".into(), "LatencyRegression".into())
    );
    assert_eq!(kstatus(&i), "Failed");
    for p in ["p-1", "p-2"] {
        assert_eq!(
            pod_annotation(&c, &ns, p, "kinfer.dev/target-version").await,
            None
        );
    }
    let ev = wait_for("a Warning RolledBack Event", T, || async {
        events(&c, &ns, "fraud", "RolledBack")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let reqs = wait_for("both webhooks", T, || async {
        let r = seen.lock().unwrap().clone();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let am = reqs
        .iter()
        .find(|r| r.starts_with("POST /api/v2/alerts"))
        .expect("alertmanager webhook");
    assert!(
        am.to_ascii_lowercase()
            .contains("authorization: bearer s3cret"),
        "{am}"
    );
    let body: Value = serde_json::from_str(&am[am.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body[0]["labels"]["alertname"], "KinferRolledBack");
    assert_eq!(body[0]["labels"]["version"], "fraud-v2");
    assert_eq!(body[0]["labels"]["namespace"], ns.as_str());
    let slack = reqs
        .iter()
        .find(|r| r.starts_with("POST /slack"))
        .expect("slack webhook");
    assert!(
        !slack.to_ascii_lowercase().contains("authorization"),
        "a Secret without the opt-in label is never sent: {slack}"
    );
    assert_eq!(
        cond(&isvc(&c, &ns, "fraud").await, "AlertsConfigured").unwrap(),
        ("False".into(), "WebhookTokenRefused".into())
    );
    let body: Value = serde_json::from_str(&slack[slack.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("fraud-v2 rolled back")
    );
    wait_for("kinfer_rollbacks_total 1", T, || async {
        (op.metric("kinfer_rollbacks_total") == Some(1.0)).then_some(())
    })
    .await;

    // GitOps hold: the spec still names fraud-v2; reconciles do not retry it or alert again.
    reconcile_and_settle(&c, &ns, &op, "1").await;
    assert_eq!(
        pod_annotation(&c, &ns, "p-0", "kinfer.dev/target-version")
            .await
            .as_deref(),
        Some("fraud-v1")
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "no second alert while holding"
    );
    assert_eq!(events(&c, &ns, "fraud", "RolledBack").await.len(), 1);
    let i = isvc(&c, &ns, "fraud").await;
    assert!(
        i.status
            .unwrap()
            .rollout
            .unwrap()
            .message
            .unwrap()
            .contains("kinfer.dev/retry")
    );

    // Retry on request: the annotation releases the hold, and the operator removes it.
    patch_isvc(
        &c,
        &ns,
        "fraud",
        json!({"metadata": {"annotations": {"kinfer.dev/retry": "please"}}}),
    )
    .await;
    wait_target(&c, &ns, "p-0", "fraud-v2").await;
    let i = wait_for("the retry annotation to be consumed", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (!i.annotations().contains_key("kinfer.dev/retry")
            && i.status.as_ref()?.rejected_version.is_none())
        .then_some(i)
    })
    .await;
    // The retry is a rollout again: no longer held (Failed) but in progress, with the same
    // generation (an annotation is not a spec change).
    assert_eq!(cond(&i, "Stalled").unwrap().0, "False");
    assert_eq!(kstatus(&i), "InProgress");
    // The canary's report on the first attempt went with the new mark, so the retry waits for
    // what its watcher reports this time instead of being rejected again by the old verdict.
    assert_eq!(
        pod_annotation(&c, &ns, "p-0", "kinfer.dev/analysis").await,
        None
    );
    reconcile_and_settle(&c, &ns, &op, "2").await;
    let i = isvc(&c, &ns, "fraud").await;
    let st = i.status.as_ref().unwrap();
    assert_eq!(st.rejected_version, None);
    assert_eq!(
        format!("{:?}", st.rollout.as_ref().unwrap().phase),
        "Canary"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "no second alert for the retry"
    );
    assert_eq!(events(&c, &ns, "fraud", "RolledBack").await.len(), 1);
    drop_ns(&c, &ns).await;
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn invalid_spec_is_reported_and_nothing_is_created() {
    let c = client().await;
    let ns = temp_ns(&c, "op-invalid").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    create_isvc(
        &c,
        &ns,
        "fraud",
        json!({"modelVersion": "fraud-v1",
        "resources": {"cpu": "1500m", "memory": "1Gi", "cpuPinning": true}}),
    )
    .await;
    let _op = Operator::start(&ns, "op", &[]);
    let i = wait_for("Ready=False", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        cond(&i, "Ready").map(|_| i)
    })
    .await;
    assert_eq!(
        cond(&i, "Ready").unwrap(),
        ("False".into(), "CpuPinningNeedsWholeCpus".into())
    );
    let msg = conditions::find(&i.status.unwrap().conditions, "Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("\"2\""),
        "the message says what to write: {msg}"
    );
    wait_for("an InvalidSpec Event", T, || async {
        events(&c, &ns, "fraud", "InvalidSpec")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(
        Api::<Deployment>::namespaced(c.clone(), &ns)
            .get_opt("fraud")
            .await
            .unwrap()
            .is_none()
    );
    // Fixing the spec reconciles at once.
    patch_isvc(
        &c,
        &ns,
        "fraud",
        json!({"spec": {"resources": {"cpu": "2"}}}),
    )
    .await;
    let d = wait_for("the Deployment", T, || async {
        Api::<Deployment>::namespaced(c.clone(), &ns)
            .get_opt("fraud")
            .await
            .ok()
            .flatten()
    })
    .await;
    let ann = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(ann["cpu-quota.crio.io"], "disable");
    drop_ns(&c, &ns).await;
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn model_version_job_results_land_in_status() {
    let c = client().await;
    let ns = temp_ns(&c, "op-mv").await;
    let api: Api<ModelVersion> = Api::namespaced(c.clone(), &ns);
    let mv: ModelVersion = serde_json::from_value(json!({
        "apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "fraud-v8"},
        "spec": {"model": "fraud", "version": "v8",
                 "source": {"uri": "s3://models/fraud/v8/", "endpoint": "http://10.250.0.1:8333", "credentialsSecret": "s3"},
                 "signature": {"trustedKeys": {"configMap": "keys"}},
                 "validation": {"goldenSet": "golden.npz"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &mv).await.unwrap();
    let _op = Operator::start(&ns, "op", &[]);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let job = wait_for("the verification Job", T, || async {
        jobs.get_opt("fraud-v8-verify").await.ok().flatten()
    })
    .await;
    let job_uid = job.metadata.uid.clone().unwrap();
    let p = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        p.init_containers.as_ref().unwrap()[0]
            .args
            .as_ref()
            .unwrap()[0],
        "check"
    );
    assert_eq!(p.containers[0].args.as_ref().unwrap()[0], "--check");
    let m = wait_for("Verified=Unknown", T, || async {
        let m = api.get("fraud-v8").await.ok()?;
        let s = m.status.clone()?;
        conditions::find(&s.conditions, "Verified").map(|_| m)
    })
    .await;
    assert_eq!(
        conditions::find(&m.status.unwrap().conditions, "Verified")
            .unwrap()
            .status,
        "Unknown"
    );

    // Stand in for the Job's pod (the Job controls it): its containers terminated with the
    // contract's JSON messages. And a look-alike with the label but no owner, reporting a bad
    // signature: it is never read.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    for (name, owners) in [
        (
            "fraud-v8-verify-abcde",
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "fraud-v8-verify",
                                          "uid": job_uid, "controller": true}]),
        ),
        ("fraud-v8-verify-forged", json!([])),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kinfer.dev/modelversion": "fraud-v8"}, "ownerReferences": owners},
            "spec": {"restartPolicy": "Never",
                     "initContainers": [{"name": "verify", "image": "w:0"}],
                     "containers": [{"name": "validate", "image": "r:0"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let term = |name: &str, image: &str, msg: &str| {
        json!({"name": name, "image": image, "imageID": "", "ready": false,
        "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": msg}}})
    };
    pods.patch_status("fraud-v8-verify-forged", &PatchParams::default(), &Patch::Merge(json!({"status": {
        "phase": "Failed",
        "initContainerStatuses": [term("verify", "w:0", r#"{"ok":false,"digest":null,"signer":null,"reason":"SignatureInvalid","message":"forged"}"#)]
    }}))).await.unwrap();
    pods.patch_status("fraud-v8-verify-abcde", &PatchParams::default(), &Patch::Merge(json!({"status": {
        "phase": "Succeeded",
        "initContainerStatuses": [term("verify", "w:0", r#"{"ok":true,"digest":"sha256:feed","signer":"release.pem sha256:beef","reason":null,"message":"ok"}"#)],
        "containerStatuses": [term("validate", "r:0", r#"{"ok":true,"samples":64,"maxAbsError":1e-7,"maxRelError":1e-6,"agreement":1.0,"reason":null,"message":"ok"}"#)]
    }}))).await.unwrap();
    let m = wait_for("Verified=True and Validated=True", T, || async {
        let m = api.get("fraud-v8").await.ok()?;
        let s = m.status.clone()?;
        (conditions::is_true(&s.conditions, "Verified")
            && conditions::is_true(&s.conditions, "Validated"))
        .then_some(s)
    })
    .await;
    assert_eq!(m.digest.as_deref(), Some("sha256:feed"));
    assert_eq!(m.signer.as_deref(), Some("release.pem sha256:beef"));
    assert_eq!(m.validation_result.unwrap().samples, 64);
    drop_ns(&c, &ns).await;
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn leader_election_two_operators_the_follower_takes_over() {
    let c = client().await;
    let ns = temp_ns(&c, "op-leader").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    let flags = [
        "--leader-elect=true",
        "--lease-namespace",
        ns.as_str(),
        "--lease-duration",
        "3s",
    ];
    let mut a = Operator::start(&ns, "op-a", &flags);
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let holder = wait_for("op-a to lead", T, || held_by(&leases, "op-a")).await;
    let mut b = Operator::start(&ns, "op-b", &flags);
    wait_for("op-b up as a follower", T, || async {
        let m = b.metrics();
        (m.contains("kinfer_leader 0")).then_some(())
    })
    .await;
    assert_eq!(a.metric("kinfer_leader"), Some(1.0));
    // Only the leader reconciles.
    create_isvc(&c, &ns, "one", json!({"modelVersion": "fraud-v1"})).await;
    wait_for("the leader reconciles", T, || async {
        Api::<Deployment>::namespaced(c.clone(), &ns)
            .get_opt("one")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(b.reconciles(), 0.0, "the follower must not reconcile");

    // Kill the leader without a chance to release: op-b takes over after the lease duration.
    let killed = std::time::Instant::now();
    a.kill();
    let new_holder = wait_for("op-b to take over", T, || held_by(&leases, "op-b")).await;
    let took = killed.elapsed();
    assert_ne!(new_holder, holder);
    assert!(
        took >= Duration::from_secs(2),
        "took over before the lease expired: {took:?}"
    );
    create_isvc(&c, &ns, "two", json!({"modelVersion": "fraud-v1"})).await;
    wait_for("the new leader reconciles", T, || async {
        Api::<Deployment>::namespaced(c.clone(), &ns)
            .get_opt("two")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(b.metric("kinfer_leader"), Some(1.0));

    // SIGTERM releases the Lease: a third replica gets it at once, not after expiry.
    let mut c3 = Operator::start(&ns, "op-c", &flags);
    wait_for("op-c up as a follower", T, || async {
        c3.metrics().contains("kinfer_leader 0").then_some(())
    })
    .await;
    assert!(b.terminate(), "graceful exit on SIGTERM; log:\n{}", b.log());
    let l = leases.get("kinfer-operator").await.unwrap();
    let h = l.spec.unwrap().holder_identity;
    assert!(
        h.is_none() || h.as_deref().unwrap().starts_with("op-c"),
        "released: {h:?}"
    );
    wait_for("op-c to lead", T, || async {
        held_by(&leases, "op-c").await.map(|_| ())
    })
    .await;
    c3.kill();
    drop_ns(&c, &ns).await;
}

/// The Lease's holder when it starts with `prefix` (an operator's pod name).
async fn held_by(leases: &Api<Lease>, prefix: &str) -> Option<String> {
    let h = leases
        .get_opt("kinfer-operator")
        .await
        .ok()??
        .spec?
        .holder_identity?;
    h.starts_with(prefix).then_some(h)
}

/// The holder's `renewTime` is another node's clock: a Lease whose renewTime is an hour old but
/// whose record keeps changing is alive and is not taken; once it stops changing for a whole
/// lease duration (on the follower's own clock) it is.
#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn leader_election_ignores_a_skewed_renew_time_of_a_live_holder() {
    let c = client().await;
    let ns = temp_ns(&c, "op-skew").await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let old = "2026-01-01T00:00:00.000000Z";
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kinfer-operator"},
        "spec": {"holderIdentity": "ghost_1", "leaseDurationSeconds": 3,
                 "acquireTime": old, "renewTime": old, "leaseTransitions": 0}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    // The ghost renews (its record changes) every 500 ms, its clock far behind.
    let renewing = {
        let leases = leases.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let patch = json!({"metadata": {"annotations": {"renewals": n.to_string()}}});
                let _ = leases
                    .patch(
                        "kinfer-operator",
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let flags = [
        "--leader-elect=true",
        "--lease-namespace",
        ns.as_str(),
        "--lease-duration",
        "3s",
    ];
    let mut a = Operator::start(&ns, "op-a", &flags);
    wait_for("op-a up as a follower", T, || async {
        a.metrics().contains("kinfer_leader 0").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let holder = leases
        .get("kinfer-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("ghost_1"), "a live lease was taken");
    assert_eq!(a.metric("kinfer_leader"), Some(0.0));
    renewing.abort();
    let stopped = std::time::Instant::now();
    wait_for("op-a to take the abandoned lease", T, || async {
        held_by(&leases, "op-a").await.map(|_| ())
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "taken before a whole lease passed unchanged"
    );
    a.kill();
    drop_ns(&c, &ns).await;
}
