//! Unit tests of the status composition, kstatus conditions included.

use super::*;
use crate::rollout::{Decision, Outcome};
use k8s_openapi::{
    api::core::v1::{PodCondition, PodStatus},
    jiff::Timestamp,
};
use kinfer_api::inference_service::RolloutStatus;

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn findings<'a>(d: &'a Decision) -> Findings<'a> {
    Findings {
        name: "fraud",
        namespace: "ml",
        generation: Some(3),
        decision: Some(d),
        desired: 3,
        replicas: 3,
        ready: 3,
        ..Default::default()
    }
}

fn serving(v: &str) -> Decision {
    Decision {
        serving: Some(v.into()),
        rollout: RolloutStatus {
            phase: RolloutPhase::Idle,
            message: Some(format!("serving {v}")),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn serving_and_ready() {
    let d = serving("v7");
    let s = compose(&Default::default(), &findings(&d), at(10));
    assert!(conditions::is_true(&s.conditions, READY));
    assert!(!conditions::is_true(&s.conditions, PROGRESSING));
    assert_eq!(
        conditions::find(&s.conditions, ROLLED_BACK).unwrap().status,
        "False"
    );
    assert_eq!(s.ready.as_deref(), Some("3/3"));
    assert_eq!(s.observed_generation, Some(3));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    assert_eq!(s.endpoints["http"], "http://fraud.ml.svc:8080");
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/name=kinfer,kinfer.dev/inferenceservice=fraud")
    );
    // Composing again later from the same findings changes nothing.
    assert_eq!(compose(&s, &findings(&d), at(99)), s);
}

#[test]
fn alerts_configured_only_while_a_webhook_names_a_token_secret() {
    let d = serving("v7");
    let mut f = findings(&d);
    f.webhook_tokens = Some(Err("webhook https://h/…: Secret s: no label".into()));
    let s = compose(&Default::default(), &f, at(1));
    let c = conditions::find(&s.conditions, ALERTS_CONFIGURED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", WEBHOOK_TOKEN_REFUSED)
    );
    assert!(c.message.contains("Secret s"));
    // Serving is unaffected: an alert without a token is not an outage.
    assert!(conditions::is_true(&s.conditions, READY));
    f.webhook_tokens = Some(Ok(()));
    let s = compose(&s, &f, at(2));
    assert!(conditions::is_true(&s.conditions, ALERTS_CONFIGURED));
    f.webhook_tokens = None;
    let s = compose(&s, &f, at(3));
    assert!(conditions::find(&s.conditions, ALERTS_CONFIGURED).is_none());
}

#[test]
fn canary_is_progressing() {
    let mut d = serving("v7");
    d.target = Some("v8".into());
    d.rollout.phase = RolloutPhase::Canary;
    d.rollout.message = Some("canary: 0/1".into());
    let s = compose(&Default::default(), &findings(&d), at(1));
    let p = conditions::find(&s.conditions, PROGRESSING).unwrap();
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Canary"));
    assert!(conditions::is_true(&s.conditions, READY));
}

#[test]
fn rollback_sets_rolled_back_true_and_progressing_false() {
    let mut d = serving("v7");
    d.rejected = Some("v8".into());
    d.rollout.phase = RolloutPhase::RolledBack;
    d.outcome = Some(Outcome::RolledBack);
    d.rolled_back = Some((true, "LatencyRegression".into(), "p99 20ms".into()));
    let s = compose(&Default::default(), &findings(&d), at(1));
    let rb = conditions::find(&s.conditions, ROLLED_BACK).unwrap();
    assert_eq!(
        (rb.status.as_str(), rb.reason.as_str()),
        ("True", "LatencyRegression")
    );
    let p = conditions::find(&s.conditions, PROGRESSING).unwrap();
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", "RolledBack")
    );
    assert_eq!(s.rejected_version.as_deref(), Some("v8"));
    assert!(conditions::is_true(&s.conditions, READY), "v7 still serves");
    // On the next reconcile (hold) the decision carries no rolled_back: the condition stays.
    let mut hold = d.clone();
    hold.rolled_back = None;
    hold.outcome = None;
    let s2 = compose(&s, &findings(&hold), at(50));
    assert_eq!(s2, s);
}

#[test]
fn invalid_spec_is_not_ready_with_the_reason() {
    let inv = Invalid {
        reason: "CpuPinningNeedsWholeCpus",
        message: "use 2".into(),
    };
    let f = Findings {
        name: "fraud",
        namespace: "ml",
        generation: Some(2),
        invalid: Some(&inv),
        ..Default::default()
    };
    let s = compose(&Default::default(), &f, at(1));
    let r = conditions::find(&s.conditions, READY).unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "CpuPinningNeedsWholeCpus")
    );
    assert_eq!(r.message, "use 2");
}

#[test]
fn unschedulable_gpu_pod_is_surfaced() {
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("fraud-abc".into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "runtime".into(),
                resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                    limits: Some(
                        [
                            (
                                "cpu".to_string(),
                                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                            ),
                            (
                                "nvidia.com/gpu".to_string(),
                                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                            ),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some(
                [(
                    "nvidia.com/gpu.product".to_string(),
                    "NVIDIA-A10".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                        .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let msg = unschedulable(&[pod]).unwrap();
    assert_eq!(
        msg,
        "pod fraud-abc cannot be scheduled (it needs a node with nvidia.com/gpu: 1, \
         nvidia.com/gpu.product=NVIDIA-A10): 0/1 nodes are available: 1 node(s) didn't match \
         Pod's node affinity/selector."
    );
    let d = serving("v7");
    let mut f = findings(&d);
    f.unschedulable = Some(msg);
    let s = compose(&Default::default(), &f, at(1));
    let r = conditions::find(&s.conditions, READY).unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "Unschedulable")
    );
}

#[test]
fn fewer_ready_pods_is_not_ready() {
    let d = serving("v7");
    let mut f = findings(&d);
    f.ready = 2;
    let s = compose(&Default::default(), &f, at(1));
    let r = conditions::find(&s.conditions, READY).unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "PodsNotReady")
    );
    assert_eq!(s.ready.as_deref(), Some("2/3"));
}

/// (Reconciling, Stalled) as (status, reason) pairs.
fn kstatus_pair(s: &InferenceServiceStatus) -> ((String, String), (String, String)) {
    let get = |t| {
        let c = conditions::find(&s.conditions, t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    (get(conditions::RECONCILING), get(conditions::STALLED))
}

fn pair(st: &str, reason: &str) -> (String, String) {
    (st.to_owned(), reason.to_owned())
}

#[test]
fn reconciling_while_a_rollout_is_in_flight() {
    for phase in [
        RolloutPhase::Verifying,
        RolloutPhase::Canary,
        RolloutPhase::Promoting,
        RolloutPhase::RollingBack,
    ] {
        let mut d = serving("v7");
        d.target = Some("v8".into());
        d.rollout.phase = phase;
        let s = compose(&Default::default(), &findings(&d), at(1));
        assert_eq!(
            kstatus_pair(&s),
            (
                pair("True", phase_name(phase)),
                pair("False", "Reconciling")
            ),
            "{phase:?}"
        );
    }
}

#[test]
fn settled_when_serving_on_every_pod() {
    let s = compose(&Default::default(), &findings(&serving("v7")), at(1));
    assert_eq!(
        kstatus_pair(&s),
        (pair("False", "Reconciled"), pair("False", "Reconciled"))
    );
}

#[test]
fn pods_starting_is_reconciling() {
    let d = serving("v7");
    let mut f = findings(&d);
    f.ready = 1;
    let s = compose(&Default::default(), &f, at(1));
    assert_eq!(kstatus_pair(&s).0, pair("True", "PodsNotReady"));
}

#[test]
fn held_after_a_rollback_is_stalled_with_the_regression() {
    let mut d = serving("v7");
    d.rejected = Some("v8".into());
    d.rollout.phase = RolloutPhase::RolledBack;
    d.rollout.message = Some("v8 rolled back; holding: change spec.modelVersion".into());
    d.rolled_back = Some((true, "LatencyRegression".into(), "p99 20ms".into()));
    let s = compose(&Default::default(), &findings(&d), at(1));
    assert_eq!(
        kstatus_pair(&s),
        (pair("False", "Stalled"), pair("True", "LatencyRegression"))
    );
    let stalled = conditions::find(&s.conditions, conditions::STALLED).unwrap();
    assert!(stalled.message.contains("holding"), "{}", stalled.message);
    // The hold's later reconciles carry no rolled_back: still Stalled, nothing changes.
    let mut hold = d.clone();
    hold.rolled_back = None;
    assert_eq!(compose(&s, &findings(&hold), at(60)), s);
    // Committing the previous version back: settled again.
    let s = compose(&s, &findings(&serving("v7")), at(90));
    assert_eq!(kstatus_pair(&s).1, pair("False", "Reconciled"));
}

#[test]
fn a_stopped_rollout_and_a_refusal_are_stalled() {
    let mut d = serving("v7");
    d.rejected = Some("v8".into());
    d.rollout.phase = RolloutPhase::Idle;
    let s = compose(&Default::default(), &findings(&d), at(1));
    assert_eq!(kstatus_pair(&s).1, pair("True", "RolloutStopped"));
    // The first version refused: nothing serves, the service is stalled on the refusal.
    let d = Decision {
        rejected: Some("v1".into()),
        rollout: RolloutStatus {
            phase: RolloutPhase::RolledBack,
            ..Default::default()
        },
        rolled_back: Some((true, "VersionRejected".into(), "refused".into())),
        ..Default::default()
    };
    let s = compose(&Default::default(), &findings(&d), at(1));
    assert_eq!(kstatus_pair(&s).1, pair("True", "VersionRejected"));
    assert!(!conditions::is_true(&s.conditions, READY));
}

#[test]
fn unschedulable_and_invalid_are_stalled() {
    let d = serving("v7");
    let mut f = findings(&d);
    f.unschedulable = Some("pod p cannot be scheduled".into());
    let s = compose(&Default::default(), &f, at(1));
    assert_eq!(kstatus_pair(&s).1, pair("True", "Unschedulable"));
    let inv = Invalid {
        reason: "CpuPinningNeedsWholeCpus",
        message: "use 2".into(),
    };
    let f = Findings {
        invalid: Some(&inv),
        ..findings(&d)
    };
    let s = compose(&Default::default(), &f, at(1));
    assert_eq!(kstatus_pair(&s).1, pair("True", "CpuPinningNeedsWholeCpus"));
}

fn pinned_pod(name: &str, condition: Option<(&str, &str, &str)>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.status = Some(PodStatus {
        conditions: Some(
            condition
                .into_iter()
                .map(|(status, reason, message)| PodCondition {
                    type_: CPU_PINNED_CONDITION.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    p
}

#[test]
fn cpu_pinned_reads_the_pods_conditions_and_names_a_pod_on_shared_cpus() {
    let ok = pinned_pod(
        "fraud-a",
        Some(("True", EXCLUSIVE_CPUS_REASON, "pinned on 2-3")),
    );
    let shared_b = pinned_pod(
        "fraud-b",
        Some(("False", SHARED_CPUS_REASON, "may run on 2 CPUs (0-1)")),
    );
    let shared_c = pinned_pod("fraud-c", Some(("False", SHARED_CPUS_REASON, "other")));
    let silent = pinned_pod("fraud-d", None);
    let mut gone = shared_c.clone();
    gone.metadata.deletion_timestamp = Some(at(1));

    assert_eq!(cpu_placement(&[&ok], false), None);
    assert_eq!(
        cpu_placement(&[&silent], true),
        Some(CpuPlacement::Unreported)
    );
    assert_eq!(
        cpu_placement(&[&ok, &silent], true),
        Some(CpuPlacement::Exclusive(1))
    );
    // A terminating pod does not speak for the service.
    assert_eq!(
        cpu_placement(&[&ok, &gone], true),
        Some(CpuPlacement::Exclusive(1))
    );
    let placement = cpu_placement(&[&shared_c, &ok, &shared_b], true);
    assert_eq!(
        placement,
        Some(CpuPlacement::Shared {
            pod: "fraud-b".into(),
            message: "may run on 2 CPUs (0-1)".into(),
            more: 1,
        })
    );

    let d = serving("v7");
    let f = Findings {
        cpu_placement: placement,
        ..findings(&d)
    };
    let s = compose(&Default::default(), &f, at(10));
    let c = conditions::find(&s.conditions, CPU_PINNED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", SHARED_CPUS_REASON)
    );
    assert!(
        c.message
            .starts_with("pod fraud-b and 1 other pod(s): may run on 2 CPUs (0-1)"),
        "{}",
        c.message
    );
    // Pinning is about latency, not availability: the service stays Ready and Settled.
    assert!(conditions::is_true(&s.conditions, READY));
    assert_eq!(kstatus_pair(&s).1.0, "False");

    let f = Findings {
        cpu_placement: Some(CpuPlacement::Exclusive(3)),
        ..findings(&d)
    };
    let s = compose(&s, &f, at(20));
    assert!(conditions::is_true(&s.conditions, CPU_PINNED));
    // Unpinned again: the condition goes.
    let s = compose(&s, &findings(&d), at(30));
    assert!(conditions::find(&s.conditions, CPU_PINNED).is_none());
}
