//! Composes an InferenceService's status from the reconcile's findings, pure: the rollout
//! decision, the Deployment's replica counts, scheduling trouble, or the validation error. The
//! conditions are `Ready`, `Progressing`, `RolledBack`, `AlertsConfigured` (while a webhook names
//! a token Secret), `CpuPinned` (with `resources.cpuPinning`, from the pods' `kinfer.dev/CpuPinned`
//! conditions: [`cpu_placement`]) and kstatus's `Reconciling` / `Stalled` ([`progress`]), each with
//! `observedGeneration`; `lastTransitionTime` only moves when a condition's status changes, so
//! composing twice from the same findings gives an equal status and the controller skips the
//! write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kinfer_api::{
    CPU_PINNED_CONDITION, EXCLUSIVE_CPUS_REASON, SHARED_CPUS_REASON,
    conditions::{
        self, ALERTS_CONFIGURED, CPU_PINNED, PROGRESSING, Progress, READY, ROLLED_BACK, Status,
    },
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
    /// Where the pods' inference threads run: `None` without `resources.cpuPinning`.
    pub cpu_placement: Option<CpuPlacement>,
}

/// What the pods of a pinned service say about their CPUs ([`cpu_placement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuPlacement {
    /// No pod has said yet (its runtime is starting).
    Unreported,
    /// Every pod that said runs on CPUs of its own.
    Exclusive(usize),
    /// This pod (and `more` others) runs on the node's shared CPU pool: its watcher's message.
    Shared {
        /// The first such pod by name.
        pod: String,
        /// Its message.
        message: String,
        /// Other pods in the same state.
        more: usize,
    },
}

/// Reads the `kinfer.dev/CpuPinned` conditions the pods' watchers set (`None` when the service
/// is not pinned). Terminating pods do not count.
pub fn cpu_placement(pods: &[&Pod], pinned: bool) -> Option<CpuPlacement> {
    if !pinned {
        return None;
    }
    let mut exclusive = 0;
    let mut shared: Vec<(String, String)> = Vec::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(c) = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == CPU_PINNED_CONDITION))
        else {
            continue;
        };
        match (c.status.as_str(), c.reason.as_deref()) {
            ("True", _) => exclusive += 1,
            ("False", Some(SHARED_CPUS_REASON)) => shared.push((
                p.metadata.name.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )),
            _ => {}
        }
    }
    shared.sort();
    Some(match shared.first() {
        Some((pod, message)) => CpuPlacement::Shared {
            pod: pod.clone(),
            message: message.clone(),
            more: shared.len() - 1,
        },
        None if exclusive > 0 => CpuPlacement::Exclusive(exclusive),
        None => CpuPlacement::Unreported,
    })
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
        let stalled = Progress::Stalled(inv.reason.to_owned(), inv.message.clone());
        conditions::set_progress(&mut s.conditions, &stalled, g, &now);
        return s;
    }
    let Some(d) = f.decision else {
        return s;
    };
    s.serving_version = d.serving.clone();
    s.previous_version = d.previous.clone();
    s.target_version = d.target.clone();
    s.rejected_version = d.rejected.clone();
    s.rejected_version_uid = d.rejected_uid.clone();
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
    match &f.cpu_placement {
        None => s.conditions.retain(|c| c.type_ != CPU_PINNED),
        Some(placement) => {
            let (st, reason, msg) = match placement {
                CpuPlacement::Unreported => (
                    Status::Unknown,
                    "NotReported",
                    "no pod has reported where its inference threads run yet".to_owned(),
                ),
                CpuPlacement::Exclusive(n) => (
                    Status::True,
                    EXCLUSIVE_CPUS_REASON,
                    format!("the inference threads of {n} pod(s) run on CPUs of their own"),
                ),
                CpuPlacement::Shared { pod, message, more } => (
                    Status::False,
                    SHARED_CPUS_REASON,
                    format!(
                        "pod {pod}{}: {message} (docs/operations.md, \"CPU pinning on the node\")",
                        if *more > 0 {
                            format!(" and {more} other pod(s)")
                        } else {
                            String::new()
                        }
                    ),
                ),
            };
            conditions::upsert(&mut s.conditions, cond(CPU_PINNED, st, reason, msg));
        }
    }
    let p = progress(&s, f, d);
    conditions::set_progress(&mut s.conditions, &p, g, &now);
    // Keep every condition's observedGeneration current.
    for c in &mut s.conditions {
        c.observed_generation = g;
    }
    s
}

/// What kstatus should read (`Reconciling` / `Stalled`), from the conditions just composed:
/// a rollout in flight (Verifying, Canary, Promoting, RollingBack) or pods still starting is
/// Reconciling; a hold after a rollback or refusal, a stopped rollout and an unschedulable pod
/// are Stalled (they need a change from the user: a commit, the retry annotation, a node);
/// otherwise Settled, and `Ready` tells the rest.
fn progress(s: &InferenceServiceStatus, f: &Findings, d: &Decision) -> Progress {
    let phase = d.rollout.phase;
    let msg = d.rollout.message.clone().unwrap_or_default();
    if let Some(why) = &f.unschedulable {
        return Progress::Stalled("Unschedulable".into(), why.clone());
    }
    let in_flight = match phase {
        RolloutPhase::Verifying | RolloutPhase::Canary | RolloutPhase::Promoting => {
            d.target.is_some()
        }
        RolloutPhase::RollingBack => true,
        RolloutPhase::Idle | RolloutPhase::RolledBack => false,
    };
    if in_flight {
        return Progress::Reconciling(phase_name(phase).into(), msg);
    }
    if d.rejected.is_some() {
        let reason = conditions::find(&s.conditions, ROLLED_BACK)
            .filter(|c| c.status == "True")
            .map_or("RolloutStopped", |c| c.reason.as_str());
        return Progress::Stalled(reason.into(), msg);
    }
    match conditions::find(&s.conditions, READY) {
        Some(r) if r.status != "True" => Progress::Reconciling(r.reason.clone(), r.message.clone()),
        _ => Progress::Settled,
    }
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
mod tests;
