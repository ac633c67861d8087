//! Composes an InferenceService's status from the reconcile's findings, pure: the rollout
//! decision, the Deployment's replica counts, scheduling trouble, or the validation error. The
//! conditions follow kstatus (`Ready`, `Progressing`, `RolledBack`, and `AlertsConfigured` while a
//! webhook names a token Secret, each with `observedGeneration`); `lastTransitionTime` only moves when a condition's status changes, so
//! composing twice from the same findings gives an equal status and the controller skips the
//! write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kinfer_api::{
    conditions::{self, ALERTS_CONFIGURED, PROGRESSING, READY, ROLLED_BACK, Status},
    inference_service::{InferenceServiceStatus, RolloutPhase},
};

use crate::{
    objects::{
        deployment::{GRPC_PORT, HTTP_PORT},
        selector_string,
    },
    rollout::Decision,
    validate::Invalid,
};

/// What the reconcile found.
#[derive(Debug, Clone, Default)]
pub struct Findings<'a> {
    /// InferenceService name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec was refused.
    pub invalid: Option<&'a Invalid>,
    /// The rollout decision (absent when the spec is invalid).
    pub decision: Option<&'a Decision>,
    /// Pods the Deployment should have.
    pub desired: i32,
    /// Pods it has.
    pub replicas: i32,
    /// Pods ready (readiness gate included: a verified model serves).
    pub ready: i32,
    /// The scheduler's message for a pod that cannot be scheduled.
    pub unschedulable: Option<String>,
    /// Whether the webhooks' token Secrets may be sent: `None` when no webhook names one,
    /// `Some(Err(why))` when one is refused.
    pub webhook_tokens: Option<Result<(), String>>,
}

/// Reason of `AlertsConfigured=False` and of its Warning Event.
pub const WEBHOOK_TOKEN_REFUSED: &str = "WebhookTokenRefused";

/// The next status.
pub fn compose(
    current: &InferenceServiceStatus,
    f: &Findings,
    now: Time,
) -> InferenceServiceStatus {
    let mut s = current.clone();
    let g = f.generation;
    let cond = |t: &str, st: Status, reason: &str, msg: String| {
        conditions::new(t, st, reason, msg, g, now.clone())
    };
    s.observed_generation = g;
    s.selector = Some(selector_string(f.name));
    s.endpoints = BTreeMap::from([
        (
            "http".to_string(),
            format!("http://{}.{}.svc:{HTTP_PORT}", f.name, f.namespace),
        ),
        (
            "grpc".to_string(),
            format!("{}.{}.svc:{GRPC_PORT}", f.name, f.namespace),
        ),
    ]);
    s.replicas = f.replicas;
    s.ready_replicas = f.ready;
    s.ready = Some(format!("{}/{}", f.ready, f.desired));

    if let Some(inv) = f.invalid {
        conditions::upsert(
            &mut s.conditions,
            cond(READY, Status::False, inv.reason, inv.message.clone()),
        );
        conditions::upsert(
            &mut s.conditions,
            cond(
                PROGRESSING,
                Status::False,
                inv.reason,
                "the spec is invalid; nothing is rolled out until it changes".into(),
            ),
        );
        ensure_rolled_back(&mut s, g, &now);
        return s;
    }
    let Some(d) = f.decision else {
        return s;
    };
    s.serving_version = d.serving.clone();
    s.previous_version = d.previous.clone();
    s.target_version = d.target.clone();
    s.rejected_version = d.rejected.clone();
    s.rollout = Some(d.rollout.clone());
    let phase = d.rollout.phase;
    let rollout_msg = d.rollout.message.clone().unwrap_or_default();

    let ready = if let Some(msg) = &f.unschedulable {
        cond(READY, Status::False, "Unschedulable", msg.clone())
    } else if let Some(v) = &d.serving {
        if f.ready >= f.desired {
            cond(
                READY,
                Status::True,
                "Serving",
                format!("{v} serves on {}/{} pods", f.ready, f.desired),
            )
        } else {
            cond(
                READY,
                Status::False,
                "PodsNotReady",
                format!("{}/{} pods ready with {v}", f.ready, f.desired),
            )
        }
    } else {
        let reason = if d.rejected.is_some() {
            "VersionRejected"
        } else {
            "NoServingVersion"
        };
        cond(READY, Status::False, reason, rollout_msg.clone())
    };
    conditions::upsert(&mut s.conditions, ready);

    let progressing = match phase {
        RolloutPhase::Verifying | RolloutPhase::Canary | RolloutPhase::Promoting
            if d.target.is_some() =>
        {
            cond(
                PROGRESSING,
                Status::True,
                phase_name(phase),
                rollout_msg.clone(),
            )
        }
        RolloutPhase::RollingBack => cond(
            PROGRESSING,
            Status::True,
            "RollingBack",
            rollout_msg.clone(),
        ),
        RolloutPhase::RolledBack => cond(
            PROGRESSING,
            Status::False,
            "RolledBack",
            rollout_msg.clone(),
        ),
        _ if d.rejected.is_some() => cond(
            PROGRESSING,
            Status::False,
            "RolloutStopped",
            rollout_msg.clone(),
        ),
        _ => cond(PROGRESSING, Status::False, "Idle", rollout_msg.clone()),
    };
    conditions::upsert(&mut s.conditions, progressing);

    if let Some((is_true, reason, msg)) = &d.rolled_back {
        let st = if *is_true {
            Status::True
        } else {
            Status::False
        };
        conditions::upsert(
            &mut s.conditions,
            cond(ROLLED_BACK, st, reason, msg.clone()),
        );
    } else {
        ensure_rolled_back(&mut s, g, &now);
    }
    match &f.webhook_tokens {
        None => s.conditions.retain(|c| c.type_ != ALERTS_CONFIGURED),
        Some(Ok(())) => {
            conditions::upsert(
                &mut s.conditions,
                cond(
                    ALERTS_CONFIGURED,
                    Status::True,
                    "TokensOptedIn",
                    "every webhook's token Secret opted in".into(),
                ),
            );
        }
        Some(Err(why)) => {
            conditions::upsert(
                &mut s.conditions,
                cond(
                    ALERTS_CONFIGURED,
                    Status::False,
                    WEBHOOK_TOKEN_REFUSED,
                    why.clone(),
                ),
            );
        }
    }
    // Keep every condition's observedGeneration current.
    for c in &mut s.conditions {
        c.observed_generation = g;
    }
    s
}

fn ensure_rolled_back(s: &mut InferenceServiceStatus, g: Option<i64>, now: &Time) {
    if conditions::find(&s.conditions, ROLLED_BACK).is_none() {
        s.conditions.push(conditions::new(
            ROLLED_BACK,
            Status::False,
            "NoRollback",
            "no rollout has been rolled back",
            g,
            now.clone(),
        ));
    }
}

/// The phase as written in status.
pub fn phase_name(p: RolloutPhase) -> &'static str {
    match p {
        RolloutPhase::Idle => "Idle",
        RolloutPhase::Verifying => "Verifying",
        RolloutPhase::Canary => "Canary",
        RolloutPhase::Promoting => "Promoting",
        RolloutPhase::RollingBack => "RollingBack",
        RolloutPhase::RolledBack => "RolledBack",
    }
}

/// What a pod asks of its node beyond CPU and memory: extended resources (`nvidia.com/gpu: 1`)
/// and its node selector, e.g. "nvidia.com/gpu: 1, nvidia.com/gpu.product=NVIDIA-A10". The
/// scheduler's own message names only the first filter that failed ("didn't match Pod's node
/// affinity/selector"), not what the pod wanted.
fn node_asks(p: &Pod) -> Vec<String> {
    let Some(spec) = p.spec.as_ref() else {
        return Vec::new();
    };
    let mut asks = BTreeSet::new();
    for c in &spec.containers {
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        for (k, v) in limits.into_iter().flatten() {
            if k.contains('/') {
                asks.insert(format!("{k}: {}", v.0));
            }
        }
    }
    let mut out: Vec<String> = asks.into_iter().collect();
    for (k, v) in spec.node_selector.iter().flatten() {
        out.push(format!("{k}={v}"));
    }
    out
}

/// The scheduler's message when one of these pods is Pending because it cannot be scheduled
/// (for example no node has the GPU product asked for), with what the pod asks of a node.
pub fn unschedulable(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        let st = p.status.as_ref()?;
        if st.phase.as_deref() != Some("Pending") || p.metadata.deletion_timestamp.is_some() {
            return None;
        }
        st.conditions.as_ref()?.iter().find_map(|c| {
            (c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| {
                let asks = node_asks(p);
                let wants = if asks.is_empty() {
                    String::new()
                } else {
                    format!(" (it needs a node with {})", asks.join(", "))
                };
                format!(
                    "pod {} cannot be scheduled{wants}: {}",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    c.message.as_deref().unwrap_or("no reason given")
                )
            })
        })
    })
}

#[cfg(test)]
mod tests {
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
                                ("cpu".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into())),
                                ("nvidia.com/gpu".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into())),
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
}
