//! The operator's guards against a stale writer, an over-eager webhook author and a ModelVersion
//! author who would choose their own trust, against a real kube-apiserver (tests/operator/run.sh starts one; plain `cargo test` skips these).

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Secret},
};
use kinfer_api::{
    InferenceService, ModelTrustPolicy, ModelVersion, conditions,
    inference_service::InferenceServiceStatus,
};
use kinfer_operator::controller::inference_service::{Written, apply_status};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(30);

fn with_serving(v: &str) -> InferenceServiceStatus {
    InferenceServiceStatus {
        serving_version: Some(v.into()),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn a_status_composed_from_a_stale_read_never_replaces_a_newer_one() {
    let c = client().await;
    let ns = temp_ns(&c, "op-stale").await;
    create_isvc(&c, &ns, "fraud", json!({"modelVersion": "fraud-v1"})).await;
    let api: Api<InferenceService> = Api::namespaced(c.clone(), &ns);
    // Two writers read the same object; the first writes its decision.
    let read = api.get("fraud").await.unwrap();
    let newer = with_serving("fraud-v2");
    assert_eq!(
        apply_status(&api, &read, &newer).await.unwrap(),
        Written::Yes
    );
    // The second, composed from the read before that write, is refused, and what is stored is
    // the newer decision.
    let stale = with_serving("fraud-v1");
    assert_eq!(
        apply_status(&api, &read, &stale).await.unwrap(),
        Written::Stale
    );
    let stored = api.get("fraud").await.unwrap();
    assert_eq!(
        stored.status.unwrap().serving_version.as_deref(),
        Some("fraud-v2")
    );
    // Read again, it writes.
    let fresh = api.get("fraud").await.unwrap();
    assert_eq!(
        apply_status(&api, &fresh, &stale).await.unwrap(),
        Written::Yes
    );
    drop_ns(&c, &ns).await;
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn a_webhook_token_secret_without_the_opt_in_label_is_refused_with_a_condition() {
    let c = client().await;
    let ns = temp_ns(&c, "op-webhook").await;
    verified_mv(&c, &ns, "fraud-v1").await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db-password"}, "stringData": {"token": "not-for-webhooks"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let hook = "https://hooks.example.invalid/services/T000/B000/XXXXSECRETPATH";
    create_isvc(
        &c,
        &ns,
        "fraud",
        json!({"modelVersion": "fraud-v1",
        "alerts": {"webhooks": [{"url": hook, "format": "slack",
                                 "tokenSecret": {"name": "db-password", "key": "token"}}]}}),
    )
    .await;
    let _op = Operator::start(&ns, "op", &[]);
    let msg = wait_for("AlertsConfigured=False", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        let s = i.status?;
        let c = conditions::find(&s.conditions, "AlertsConfigured")?;
        (c.status == "False").then(|| (c.reason.clone(), c.message.clone()))
    })
    .await;
    assert_eq!(msg.0, "WebhookTokenRefused");
    assert!(
        msg.1.contains("Secret db-password") && msg.1.contains("kinfer.dev/webhook-token=true"),
        "the condition names the Secret and the fix: {}",
        msg.1
    );
    assert!(
        !msg.1.contains("not-for-webhooks") && !msg.1.contains("XXXXSECRETPATH"),
        "neither the Secret's value nor the URL's path is shown: {}",
        msg.1
    );
    let ev = wait_for("a WebhookTokenRefused Event", T, || async {
        events(&c, &ns, "fraud", "WebhookTokenRefused")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    // The Secret's owner opts it in; the next reconcile (Secrets are not watched) sees it.
    secrets
        .patch(
            "db-password",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kinfer.dev/webhook-token": "true"}}})),
        )
        .await
        .unwrap();
    patch_isvc(
        &c,
        &ns,
        "fraud",
        json!({"metadata": {"annotations": {"test/poke": "1"}}}),
    )
    .await;
    wait_for("AlertsConfigured=True", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (cond(&i, "AlertsConfigured")?.0 == "True").then_some(())
    })
    .await;
    // No webhook names a token: no condition.
    Api::<InferenceService>::namespaced(c.clone(), &ns)
        .patch(
            "fraud",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"alerts": {"webhooks": [{"url": hook, "format": "slack"}]}}}),
            ),
        )
        .await
        .unwrap();
    wait_for("no AlertsConfigured condition", T, || async {
        let i = isvc(&c, &ns, "fraud").await;
        (i.status.is_some() && cond(&i, "AlertsConfigured").is_none()).then_some(())
    })
    .await;
    drop_ns(&c, &ns).await;
}

const KEY_A: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PUBLIC KEY-----\n";
const KEY_B: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBBBBBBBBBBBBBBBBBBBBBBBBBBBB\n-----END PUBLIC KEY-----\n";

async fn model_version(c: &kube::Client, ns: &str, name: &str, signature: serde_json::Value) {
    let mv: ModelVersion = serde_json::from_value(json!({
        "apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
        "spec": {"model": "fraud", "version": "v1", "source": {"uri": format!("s3://models/fraud/{name}/")},
                 "signature": signature}
    }))
    .unwrap();
    Api::<ModelVersion>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &mv)
        .await
        .unwrap();
}

async fn verified(c: &kube::Client, ns: &str, name: &str) -> (String, String, ModelVersion) {
    wait_for(&format!("{name} decided or verifying"), T, || async {
        let mv = Api::<ModelVersion>::namespaced(c.clone(), ns)
            .get(name)
            .await
            .ok()?;
        let cond = conditions::find(&mv.status.as_ref()?.conditions, "Verified")?.clone();
        Some((cond.reason, cond.message, mv))
    })
    .await
}

#[tokio::test]
#[ignore = "needs kube-apiserver: make test-operator"]
async fn a_model_trust_policy_is_narrowed_by_a_model_version_never_widened() {
    let c = client().await;
    let ns = temp_ns(&c, "op-trust").await;
    // A policy for this namespace only (other tests run beside this one).
    let policy_name = format!("corp-{ns}");
    let policies: Api<ModelTrustPolicy> = Api::all(c.clone());
    let policy: ModelTrustPolicy = serde_json::from_value(json!({
        "apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelTrustPolicy",
        "metadata": {"name": policy_name},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                 "publicKeys": [{"name": "release", "pem": KEY_A}]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "my-keys"},
        "data": {"release.pem": KEY_A, "mine.pem": KEY_B}}))
    .unwrap();
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    model_version(&c, &ns, "fraud-unsigned", json!({"required": false})).await;
    model_version(
        &c,
        &ns,
        "fraud-wide",
        json!({"trustedKeys": {"configMap": "my-keys"}}),
    )
    .await;
    model_version(&c, &ns, "fraud-policy-keys", json!({})).await;
    let _op = Operator::start(&ns, "op", &[]);

    let (reason, msg, _) = verified(&c, &ns, "fraud-unsigned").await;
    assert_eq!(reason, "TrustPolicyViolation");
    assert!(
        msg.contains("signature.required: false")
            && msg.contains(&format!("ModelTrustPolicy {policy_name}")),
        "{msg}"
    );
    let (reason, msg, _) = verified(&c, &ns, "fraud-wide").await;
    assert_eq!(reason, "TrustPolicyViolation");
    assert!(
        msg.contains("\"mine\"") && msg.contains(&policy_name),
        "{msg}"
    );
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    for refused in ["fraud-unsigned-verify", "fraud-wide-verify"] {
        assert!(
            jobs.get_opt(refused).await.unwrap().is_none(),
            "no Job for {refused}"
        );
    }
    // Without keys of its own, the Job verifies against the policy's, given on its command line.
    let job = wait_for("the fraud-policy-keys Job", T, || async {
        jobs.get_opt("fraud-policy-keys-verify")
            .await
            .ok()
            .flatten()
    })
    .await;
    let pod = job.spec.unwrap().template.spec.unwrap();
    let args = pod.init_containers.unwrap()[0].args.clone().unwrap();
    assert!(
        args.iter()
            .any(|a| a.starts_with("release=-----BEGIN PUBLIC KEY-----")),
        "{args:?}"
    );
    assert!(
        pod.volumes
            .unwrap()
            .iter()
            .all(|v| v.config_map.is_none() && v.secret.is_none())
    );
    let applied = wait_for("status.trust recorded", T, || async {
        let mv = Api::<ModelVersion>::namespaced(c.clone(), &ns)
            .get("fraud-policy-keys")
            .await
            .ok()?;
        mv.status.as_ref()?.trust.clone()
    })
    .await;
    assert_eq!(applied.policies, [policy_name.as_str()]);
    assert_eq!(applied.public_keys[0].pem, KEY_A);
    // A ModelVersion that narrows to one of the policy's keys is verified with just that key.
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "narrow"}, "data": {"release.pem": KEY_A}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    model_version(
        &c,
        &ns,
        "fraud-narrow",
        json!({"trustedKeys": {"configMap": "narrow"}}),
    )
    .await;
    wait_for("the fraud-narrow Job", T, || async {
        jobs.get_opt("fraud-narrow-verify").await.ok().flatten()
    })
    .await;
    policies
        .delete(&policy_name, &Default::default())
        .await
        .unwrap();
    drop_ns(&c, &ns).await;
}
