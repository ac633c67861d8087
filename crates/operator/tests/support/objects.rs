//! Objects the integration tests create and read: verified ModelVersions, InferenceServices,
//! their conditions and Events.

use k8s_openapi::api::events::v1::Event;
use kinfer_api::{InferenceService, ModelVersion, conditions};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// Creates a ModelVersion and marks it verified, as its Job would have.
pub async fn verified_mv(c: &Client, ns: &str, name: &str) {
    let api: Api<ModelVersion> = Api::namespaced(c.clone(), ns);
    let mv: ModelVersion = serde_json::from_value(json!({
        "apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {"model": "fraud", "version": name.rsplit('-').next().unwrap(),
                 "source": {"uri": format!("s3://models/fraud/{name}/")}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &mv).await.unwrap();
    let now = "2026-01-01T00:00:00Z";
    let cond = |t: &str, r: &str| {
        json!({"type": t, "status": "True", "reason": r, "message": "test",
        "observedGeneration": 1, "lastTransitionTime": now})
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "digest": "sha256:00", "signer": "test",
            "observedGeneration": 1,
            "conditions": [cond("Verified", "SignatureValid"), cond("Validated", "GoldenSetMatched")]
        }})),
    )
    .await
    .unwrap();
}

pub async fn create_isvc(c: &Client, ns: &str, name: &str, spec: Value) -> InferenceService {
    let api: Api<InferenceService> = Api::namespaced(c.clone(), ns);
    let i: InferenceService = serde_json::from_value(json!({
        "apiVersion": "kinfer.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &i).await.unwrap()
}

pub async fn isvc(c: &Client, ns: &str, name: &str) -> InferenceService {
    Api::<InferenceService>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

pub fn cond(i: &InferenceService, t: &str) -> Option<(String, String)> {
    let s = i.status.as_ref()?;
    conditions::find(&s.conditions, t).map(|c| (c.status.clone(), c.reason.clone()))
}

pub async fn events(c: &Client, ns: &str, regarding: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
        })
        .collect()
}

/// Merge-patches an InferenceService (a spec change, or an annotation that makes the operator
/// reconcile it again).
pub async fn patch_isvc(c: &Client, ns: &str, name: &str, patch: Value) {
    Api::<InferenceService>::namespaced(c.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// What kstatus computes for a live object: sigs.k8s.io/cli-utils' `status.Compute` (what Flux's
/// `wait: true` and kpt read), run by the kstatus checker that `tests/e2e/cluster/build.sh
/// gitops` builds; tests/operator/run.sh names it in `KINFER_KSTATUS`.
pub fn kstatus<K: serde::Serialize>(obj: &K) -> String {
    use std::io::Write as _;
    let bin = std::env::var("KINFER_KSTATUS")
        .expect("KINFER_KSTATUS must name the kstatus checker (run tests/operator/run.sh)");
    let mut child = std::process::Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(obj).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{bin} failed");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    line["status"].as_str().unwrap().to_owned()
}
