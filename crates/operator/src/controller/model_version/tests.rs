//! Unit tests of the ModelVersion status composition.

use super::*;
use k8s_openapi::{
    api::{
        batch::v1::{JobCondition, JobStatus},
        core::v1::{ContainerState, ContainerStateTerminated, PodStatus},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn terminated(name: &str, msg: &str) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                message: Some(msg.into()),
                exit_code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(created: i64, verify: Option<&str>, validate: Option<&str>) -> Pod {
    let mut p = Pod::default();
    p.metadata.creation_timestamp = Some(at(created));
    p.status = Some(PodStatus {
        init_container_statuses: verify.map(|m| vec![terminated(VERIFY_CONTAINER, m)]),
        container_statuses: validate.map(|m| vec![terminated(VALIDATE_CONTAINER, m)]),
        ..Default::default()
    });
    p
}

fn cond<'a>(s: &'a ModelVersionStatus, t: &str) -> (&'a str, &'a str) {
    let c = conditions::find(&s.conditions, t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn copies_both_results_into_status() {
    let pods = [pod(
        10,
        Some(
            r#"{"ok":true,"digest":"sha256:ab","signer":"release.pem sha256:cd","reason":null,"message":"ok"}"#,
        ),
        Some(
            r#"{"ok":true,"samples":64,"maxAbsError":1e-7,"maxRelError":2e-6,"agreement":1.0,"reason":null,"message":"ok"}"#,
        ),
    )];
    let o = outcome(None, &pods, true);
    let s = compose(&Default::default(), Some(1), "v8-verify", &o, at(20));
    assert_eq!(cond(&s, VERIFIED), ("True", "SignatureValid"));
    assert_eq!(cond(&s, VALIDATED), ("True", "GoldenSetMatched"));
    assert_eq!(s.digest.as_deref(), Some("sha256:ab"));
    assert_eq!(s.signer.as_deref(), Some("release.pem sha256:cd"));
    let r = s.validation_result.as_ref().unwrap();
    assert_eq!((r.samples, r.agreement), (64, 1.0));
    assert!(decided(&s));
    assert_eq!(cond(&s, READY), ("True", "Validated"));
    assert_eq!(cond(&s, conditions::RECONCILING).0, "False");
    assert_eq!(cond(&s, conditions::STALLED).0, "False");
    assert!(
        conditions::find(&s.conditions, VALIDATED)
            .unwrap()
            .message
            .contains("64 samples")
    );
    // Same findings later: no change.
    assert_eq!(compose(&s, Some(1), "v8-verify", &o, at(99)), s);
}

#[test]
fn signature_failure_rejects() {
    let pods = [pod(
        10,
        Some(
            r#"{"ok":false,"reason":"SignatureInvalid","message":"no trusted key verifies model.sig"}"#,
        ),
        None,
    )];
    let s = compose(
        &Default::default(),
        Some(1),
        "j",
        &outcome(None, &pods, true),
        at(1),
    );
    assert_eq!(cond(&s, VERIFIED), ("False", "SignatureInvalid"));
    assert!(!decided(&s), "Validated stays Unknown");
    let st = crate::controller::inference_service::version_state(Some(&{
        let mut m = crate::objects::job::tests::mv(
            "v8",
            r#"{"model":"f","version":"v8","source":{"uri":"s3://bucket/x/"}}"#,
        );
        m.status = Some(s);
        m
    }));
    assert!(matches!(st, crate::rollout::VersionState::Rejected { .. }));
}

#[test]
fn golden_set_mismatch_rejects_with_figures() {
    let pods = [pod(
        10,
        Some(r#"{"ok":true,"digest":"sha256:ab","signer":"k"}"#),
        Some(
            r#"{"ok":false,"samples":64,"maxAbsError":0.5,"maxRelError":0.9,"agreement":0.5,"reason":"NumericalMismatch","message":"32 of 64 samples disagree"}"#,
        ),
    )];
    let s = compose(
        &Default::default(),
        Some(1),
        "j",
        &outcome(None, &pods, true),
        at(1),
    );
    assert_eq!(cond(&s, VALIDATED), ("False", "NumericalMismatch"));
    assert!(
        conditions::find(&s.conditions, VALIDATED)
            .unwrap()
            .message
            .contains("agreement 0.5000")
    );
    assert_eq!(s.validation_result.unwrap().agreement, 0.5);
}

#[test]
fn a_success_without_digest_is_not_verified() {
    // Pods serve only the recorded digest, so a result that records none verifies nothing.
    let pods = [pod(
        10,
        Some(r#"{"ok":true,"signer":"k"}"#),
        Some(r#"{"ok":true}"#),
    )];
    let s = compose(
        &Default::default(),
        Some(1),
        "j",
        &outcome(None, &pods, false),
        at(1),
    );
    assert_eq!(cond(&s, VERIFIED), ("False", "VerificationFailed"));
    assert!(s.digest.is_none());
}

#[test]
fn running_then_transient_fetch_failure_waits() {
    let s = compose(
        &Default::default(),
        Some(1),
        "j",
        &outcome(None, &[], true),
        at(1),
    );
    assert_eq!(cond(&s, VERIFIED), ("Unknown", "Verifying"));
    let pods = [pod(
        10,
        Some(r#"{"ok":false,"reason":"FetchFailed","message":"503"}"#),
        None,
    )];
    let o = outcome(None, &pods, true);
    assert!(o.verify.is_none());
    // The newest pod's answer wins.
    let pods = [
        pod(10, Some(r#"{"ok":false,"reason":"FetchFailed"}"#), None),
        pod(
            20,
            Some(r#"{"ok":true,"signer":"k","digest":"d"}"#),
            Some(r#"{"ok":true}"#),
        ),
    ];
    let o = outcome(None, &pods, false);
    let s = compose(&Default::default(), Some(1), "j", &o, at(1));
    assert_eq!(cond(&s, VALIDATED), ("True", "Loaded"));
    assert!(s.validation_result.is_none());
}

#[test]
fn failed_job_without_results_rejects() {
    let job = Job {
        status: Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("BackoffLimitExceeded".into()),
                message: Some("Job has reached the specified backoff limit".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let o = outcome(Some(&job), &[], true);
    let s = compose(&Default::default(), Some(1), "v8-verify", &o, at(1));
    assert_eq!(cond(&s, VERIFIED), ("False", "VerificationJobFailed"));
    assert!(
        conditions::find(&s.conditions, VERIFIED)
            .unwrap()
            .message
            .contains("backoff limit")
    );
}

#[test]
fn kstatus_reads_a_running_job_as_reconciling_and_a_refusal_as_stalled() {
    let o = outcome(None, &[], true);
    let s = compose(&Default::default(), Some(1), "v8-verify", &o, at(1));
    assert_eq!(cond(&s, conditions::RECONCILING), ("True", "Verifying"));
    assert_eq!(cond(&s, conditions::STALLED).0, "False");
    assert_eq!(cond(&s, READY), ("False", "Verifying"));
    let pods = [pod(
        10,
        Some(r#"{"ok":false,"reason":"SignatureInvalid","message":"no trusted key"}"#),
        None,
    )];
    let s = compose(&s, Some(1), "v8-verify", &outcome(None, &pods, true), at(2));
    assert_eq!(cond(&s, conditions::STALLED), ("True", "SignatureInvalid"));
    assert_eq!(cond(&s, conditions::RECONCILING).0, "False");
    let stalled = conditions::find(&s.conditions, conditions::STALLED).unwrap();
    assert_eq!(stalled.message, "Verified: no trusted key");
    assert_eq!(cond(&s, READY), ("False", "SignatureInvalid"));
}
