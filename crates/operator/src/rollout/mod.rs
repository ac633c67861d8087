//! The rollout state machine, pure: from what serves (the InferenceService's status), what the
//! spec asks for, the target ModelVersion's verification state and the pods' reports, decide the
//! next status, which pods to (re)mark with `kinfer.dev/target-version`, and what to announce.
//!
//! ```text
//!   Idle ──spec names a new version──▶ Verifying ──Job passed──▶ Canary ──all canaries Passed──▶ Promoting
//!    ▲                                   │ Job failed: Refused            │ any Refused/RolledBack      │
//!    │                                   ▼                                ▼                             │
//!    └──────── all pods Passed ◀──── (hold) ◀── RolledBack ◀── RollingBack ◀──────────────────────────┘
//! ```
//!
//! GitOps hold: after a rollback (or a refusal) `rejectedVersion` is the version the spec still
//! names. The previous version keeps serving and the rejected one is not retried until
//! `spec.modelVersion` changes, the ModelVersion is re-created, or the `kinfer.dev/retry`
//! annotation is set (the operator removes it when it acts on it). A pod asked for a version
//! again loses its earlier report on it in the same patch: the retry is judged by what the
//! watcher reports this time, never by the verdict that caused the hold.
//!
//! Pods are chosen oldest first (creation time, then name), so the choice is deterministic, and
//! every decision is a function of its input only, so a second reconcile decides the same thing.

mod outcomes;
mod phases;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lifecycle;

use k8s_openapi::jiff::Timestamp;
use kinfer_api::{
    inference_service::{AnalysisFigures, InferenceServiceStatus, RolloutPhase, RolloutStatus},
    report::{AnalysisReport, Verdict},
};

/// What the operator knows about one serving pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Creation time (oldest pods are chosen first).
    pub created: Option<Timestamp>,
    /// `kinfer.dev/target-version`.
    pub target: Option<String>,
    /// `kinfer.dev/serving-version`.
    pub serving: Option<String>,
    /// `kinfer.dev/analysis`.
    pub report: Option<AnalysisReport>,
    /// Being deleted: never chosen, never waited for.
    pub terminating: bool,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

impl PodView {
    fn verdict(&self, version: &str) -> Option<Verdict> {
        self.report.as_ref().and_then(|r| r.decided(version))
    }
}

/// The target ModelVersion, as its verification left it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionState {
    /// No ModelVersion of that name in the namespace.
    Missing,
    /// The verification Job has not decided yet.
    Verifying,
    /// `Verified` or `Validated` is False.
    Rejected {
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// Verified and validated: may be rolled out.
    Ready,
}

/// Everything a decision depends on.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// `spec.modelVersion`.
    pub spec_version: &'a str,
    /// The current status.
    pub status: &'a InferenceServiceStatus,
    /// The target ModelVersion's state.
    pub target: VersionState,
    /// The pods of the InferenceService.
    pub pods: &'a [PodView],
    /// `spec.rollout.canary.replicas`.
    pub canary_replicas: i32,
    /// `spec.rollout.autoRollback`.
    pub auto_rollback: bool,
    /// The `kinfer.dev/retry` annotation is set.
    pub retry: bool,
    /// The target ModelVersion is another object than the one rejected under its name
    /// ([`version_recreated`]).
    pub version_recreated: bool,
    /// The uid of the target ModelVersion, when it exists.
    pub target_uid: Option<&'a str>,
}

/// Whether the ModelVersion `spec` names is another object (another uid) than the one rejected
/// under that name: deleted and created again, so it is tried again. A rejection recorded
/// without a uid is never taken as re-created.
pub fn version_recreated(
    status: &InferenceServiceStatus,
    spec: &str,
    target_uid: Option<&str>,
) -> bool {
    status.rejected_version.as_deref() == Some(spec)
        && matches!(
            (status.rejected_version_uid.as_deref(), target_uid),
            (Some(rejected), Some(now)) if rejected != now
        )
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// An Event to emit on the InferenceService.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// The version it is about (part of the Event's `action`, so that Events about different
    /// versions are not folded into one series).
    pub version: String,
}

/// How a rollout ended (the `outcome` label of `kinfer_rollouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The new version serves everywhere.
    Promoted,
    /// A pod refused or rolled back the new version; the previous one serves again.
    RolledBack,
    /// The ModelVersion failed verification; it never reached a pod.
    Refused,
    /// A pod regressed with `autoRollback: false`: stopped, not reverted.
    Stopped,
}

impl Outcome {
    /// Every outcome (their series are exported from 0, so that `increase()` sees the first one).
    pub const ALL: [Outcome; 4] = [
        Outcome::Promoted,
        Outcome::RolledBack,
        Outcome::Refused,
        Outcome::Stopped,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled_back",
            Outcome::Refused => "refused",
            Outcome::Stopped => "stopped",
        }
    }
}

/// What to alert about (rollback or refusal).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertInfo {
    /// Rolled back / refused / stopped.
    pub outcome: Outcome,
    /// The rejected version.
    pub version: String,
    /// The version that serves.
    pub serving: Option<String>,
    /// Reason (from the pod report or the ModelVersion condition).
    pub reason: String,
    /// Human message with the figures.
    pub message: String,
    /// The pod whose report decided it.
    pub pod: Option<String>,
    /// The figures.
    pub figures: Option<AnalysisFigures>,
}

/// A pod to patch: set `kinfer.dev/target-version` to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPatch {
    /// Pod name.
    pub pod: String,
    /// ModelVersion name.
    pub version: String,
    /// The pod's `kinfer.dev/analysis` is an earlier attempt's report on `version` (the pod is
    /// asked for it again: a retry, a re-created ModelVersion, a spec that went back to it): the
    /// same patch removes it, so the new attempt is judged by its own report only.
    pub clear_report: bool,
    /// With `clear_report`: the pod's `resourceVersion` as read. The patch applies only to
    /// that pod (a report written since is not removed); a pod that changed is decided again.
    pub if_unchanged: Option<String>,
}

impl PodPatch {
    /// Asks `pod` for `version`, nothing else.
    pub fn new(pod: &str, version: &str) -> Self {
        Self {
            pod: pod.to_owned(),
            version: version.to_owned(),
            clear_report: false,
            if_unchanged: None,
        }
    }
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// `servingVersion`.
    pub serving: Option<String>,
    /// `previousVersion`.
    pub previous: Option<String>,
    /// `targetVersion`.
    pub target: Option<String>,
    /// `rejectedVersion`.
    pub rejected: Option<String>,
    /// `rejectedVersionUid`.
    pub rejected_uid: Option<String>,
    /// `rollout`.
    pub rollout: RolloutStatus,
    /// Pods to (re)mark.
    pub patches: Vec<PodPatch>,
    /// Event to emit.
    pub notice: Option<Notice>,
    /// Alert to send.
    pub alert: Option<AlertInfo>,
    /// A rollout ended.
    pub outcome: Option<Outcome>,
    /// Remove the `kinfer.dev/retry` annotation (it was acted on).
    pub consume_retry: bool,
    /// Set the `RolledBack` condition: (status true?, reason, message).
    pub rolled_back: Option<(bool, String, String)>,
}

/// Decides the next step, which ModelVersion object a rejection is about, and which pods'
/// reports are left over from an earlier attempt on the version they are asked for.
pub fn decide(input: &Input) -> Decision {
    let mut d = decide_step(input);
    for patch in &mut d.patches {
        if let Some(p) = input.pods.iter().find(|p| p.name == patch.pod)
            && p.target.as_deref() != Some(patch.version.as_str())
            && p.report
                .as_ref()
                .is_some_and(|r| r.version == patch.version)
        {
            patch.clear_report = true;
            patch.if_unchanged = p.resource_version.clone();
        }
    }
    let st = input.status;
    let fresh = st.rejected_version != d.rejected || input.retry || input.version_recreated;
    d.rejected_uid = match &d.rejected {
        Some(v) if v == input.spec_version && (fresh || st.rejected_version_uid.is_none()) => {
            input.target_uid.map(str::to_owned)
        }
        Some(_) if !fresh => st.rejected_version_uid.clone(),
        _ => None,
    };
    d
}

/// One function per situation, in the order they are checked.
fn decide_step(input: &Input) -> Decision {
    let st = input.status;
    let spec = input.spec_version;
    let mut d = Decision {
        serving: st.serving_version.clone(),
        previous: st.previous_version.clone(),
        target: st.target_version.clone(),
        rejected: st.rejected_version.clone(),
        rollout: st.rollout.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut live: Vec<&PodView> = input.pods.iter().filter(|p| !p.terminating).collect();
    live.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));

    let Some(serving) = d.serving.clone() else {
        phases::first_version(&mut d, input, &live);
        return d;
    };
    if spec == serving {
        phases::settled(&mut d, &live, &serving);
        return d;
    }
    if d.rejected.as_deref() == Some(spec) {
        if input.retry || input.version_recreated {
            d.rejected = None;
            d.consume_retry = input.retry;
            d.rollout.phase = RolloutPhase::Idle;
        } else {
            outcomes::hold(&mut d, input, &live, &serving, spec);
            return d;
        }
    }
    // A different version than the one being rolled out: abandon that one. A rollout that
    // waited in Verifying starts here, at the canary, like one whose version was ready.
    let restarting = d.target.as_deref() != Some(spec)
        || !matches!(
            d.rollout.phase,
            RolloutPhase::Canary | RolloutPhase::Promoting
        );
    d.target = Some(spec.to_owned());
    revert_others(&mut d, &live, &serving, Some(spec));
    if !phases::verified(&mut d, input, &live, &serving) {
        return d;
    }
    let marked: Vec<&PodView> = live
        .iter()
        .copied()
        .filter(|p| p.target.as_deref() == Some(spec))
        .collect();
    if let Some(failed) = marked.iter().find(|p| {
        matches!(
            p.verdict(spec),
            Some(
                Verdict::Refused | Verdict::RolledBack | Verdict::Regressed | Verdict::Inconclusive
            )
        )
    }) {
        outcomes::fail(&mut d, input, &live, &serving, spec, failed);
        return d;
    }
    let canaries = (input.canary_replicas.max(0) as usize).min(live.len());
    if restarting {
        d.rollout = RolloutStatus {
            phase: if canaries == 0 {
                RolloutPhase::Promoting
            } else {
                RolloutPhase::Canary
            },
            ..Default::default()
        };
    }
    if d.rollout.phase == RolloutPhase::Canary
        && !phases::canary(&mut d, &live, marked, &serving, spec, canaries)
    {
        return d;
    }
    phases::promoting(&mut d, &live, &serving, spec);
    d
}

/// Sets the patch for `pod` (replacing an earlier one: a pod gets one mark per decision).
pub(crate) fn mark(patches: &mut Vec<PodPatch>, pod: &str, version: &str) {
    patches.retain(|p| p.pod != pod);
    patches.push(PodPatch::new(pod, version));
}

pub(crate) fn set(d: &mut Decision, phase: RolloutPhase, message: String) {
    d.rollout.phase = phase;
    d.rollout.message = Some(message);
    d.rollout.canary_pods.clear();
}

/// Marks pods that were asked for a version other than `keep` (and other than what serves)
/// back to what serves: the leftovers of an abandoned rollout.
pub(crate) fn revert_others(
    d: &mut Decision,
    live: &[&PodView],
    serving: &str,
    keep: Option<&str>,
) {
    for p in live {
        if let Some(t) = p.target.as_deref()
            && t != serving
            && Some(t) != keep
            && !d.patches.iter().any(|x| x.pod == p.name)
        {
            d.patches.push(PodPatch::new(&p.name, serving));
        }
    }
}

pub(crate) fn latest_figures(pods: &[&PodView], spec: &str) -> Option<AnalysisFigures> {
    pods.iter()
        .filter_map(|p| p.report.as_ref())
        .filter(|r| r.version == spec && r.figures.is_some())
        .max_by(|a, b| a.updated.cmp(&b.updated))
        .and_then(|r| r.figures.clone())
}

/// The figures in words: `p99 20.0ms (baseline 1.0ms), error rate 0.00%, drift 0.31, 1200 requests`.
pub fn describe(f: &AnalysisFigures) -> String {
    let mut parts = Vec::new();
    if let Some(p) = f.p99 {
        let mut s = format!("p99 {:.1}ms", p * 1e3);
        if let Some(b) = f.baseline_p99 {
            s.push_str(&format!(" (baseline {:.1}ms)", b * 1e3));
        }
        parts.push(s);
    }
    if let Some(r) = f.latency_ratio {
        let hi = f
            .latency_ratio_high
            .map_or_else(|| "∞".to_owned(), |h| format!("{h:.2}"));
        parts.push(format!(
            "latency {r:.2}× baseline ({:.2}–{hi})",
            f.latency_ratio_low.unwrap_or(0.0)
        ));
    }
    if let Some(e) = f.error_rate {
        parts.push(format!("error rate {:.2}%", e * 100.0));
    }
    if let Some(x) = f.drift {
        parts.push(format!("drift {x:.3}"));
    }
    if let Some(r) = f.replayed {
        parts.push(format!("{r} recent requests replayed on both versions"));
    } else if let Some(r) = f.requests {
        match f.baseline_requests {
            Some(b) => parts.push(format!("{r} requests ({b} on the baseline)")),
            None => parts.push(format!("{r} requests")),
        }
    }
    parts.join(", ")
}
