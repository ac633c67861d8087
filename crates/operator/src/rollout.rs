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
//! annotation is set (the operator removes it when it acts on it).
//!
//! Pods are chosen oldest first (creation time, then name), so the choice is deterministic, and
//! every decision is a function of its input only, so a second reconcile decides the same thing.

use k8s_openapi::jiff::Timestamp;
use kinfer_api::{
    inference_service::{AnalysisFigures, InferenceServiceStatus, RolloutPhase, RolloutStatus},
    report::{AnalysisReport, Verdict, reasons},
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
}

impl PodView {
    fn verdict(&self, version: &str) -> Option<Verdict> {
        self.report.as_ref().and_then(|r| r.decided(version))
    }
}

/// The target ModelVersion, as its verification left it.
#[derive(Debug, Clone, PartialEq)]
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
    /// The target ModelVersion was (re-)created after the version was rejected.
    pub version_recreated: bool,
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

/// Decides the next step.
pub fn decide(input: &Input) -> Decision {
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
    let phase = d.rollout.phase;
    let mut live: Vec<&PodView> = input.pods.iter().filter(|p| !p.terminating).collect();
    live.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));

    // First rollout: nothing serves yet; pods load spec.modelVersion by themselves.
    let Some(serving) = d.serving.clone() else {
        d.target = Some(spec.to_owned());
        match &input.target {
            VersionState::Missing => {
                set(
                    &mut d,
                    RolloutPhase::Verifying,
                    format!("waiting for ModelVersion {spec} to exist"),
                );
            }
            VersionState::Verifying => {
                set(
                    &mut d,
                    RolloutPhase::Verifying,
                    format!("waiting for ModelVersion {spec} to be verified"),
                );
            }
            VersionState::Rejected { reason, message } => {
                refuse(&mut d, input, spec, reason, message);
            }
            VersionState::Ready if !live.iter().any(|p| p.serving.as_deref() == Some(spec)) => {
                // Verified, but no pod serves it yet (pods starting, or Pending: the Ready
                // condition says why). servingVersion names only what a pod actually serves.
                set(
                    &mut d,
                    RolloutPhase::Promoting,
                    format!("first version {spec}: waiting for a pod to load and serve it"),
                );
            }
            VersionState::Ready => {
                d.serving = Some(spec.to_owned());
                d.target = None;
                d.rejected = None;
                d.rollout = RolloutStatus {
                    phase: RolloutPhase::Idle,
                    message: Some(format!("serving {spec}")),
                    ..Default::default()
                };
                d.notice = Some(Notice {
                    severity: Severity::Normal,
                    reason: reasons::PROMOTED.into(),
                    message: format!("serving {spec} (first version)"),
                    version: spec.to_owned(),
                });
                d.outcome = Some(Outcome::Promoted);
            }
        }
        return d;
    };

    // The spec names what serves: nothing to roll out. Undo any marks of an abandoned rollout.
    if spec == serving {
        revert_others(&mut d, &live, &serving, None);
        let was_running = matches!(
            phase,
            RolloutPhase::Verifying | RolloutPhase::Canary | RolloutPhase::Promoting
        );
        let message = match (&d.target, was_running) {
            (Some(t), true) if t != &serving => {
                format!("rollout of {t} cancelled: spec.modelVersion names {serving} again")
            }
            _ => d
                .rollout
                .message
                .clone()
                .filter(|_| phase == RolloutPhase::Idle)
                .unwrap_or_else(|| format!("serving {serving}")),
        };
        d.target = None;
        d.rejected = None;
        d.rollout = RolloutStatus {
            phase: RolloutPhase::Idle,
            analysis: d.rollout.analysis.clone(),
            message: Some(message),
            ..Default::default()
        };
        return d;
    }

    // GitOps hold.
    if d.rejected.as_deref() == Some(spec) {
        if input.retry || input.version_recreated {
            d.rejected = None;
            d.consume_retry = input.retry;
            d.rollout.phase = RolloutPhase::Idle;
        } else {
            hold(&mut d, input, &live, &serving, spec);
            return d;
        }
    }

    // A different version than the one being rolled out: abandon that one.
    let restarting = d.target.as_deref() != Some(spec)
        || !matches!(
            d.rollout.phase,
            RolloutPhase::Verifying | RolloutPhase::Canary | RolloutPhase::Promoting
        );
    d.target = Some(spec.to_owned());
    revert_others(&mut d, &live, &serving, Some(spec));

    match &input.target {
        VersionState::Missing => {
            set(
                &mut d,
                RolloutPhase::Verifying,
                format!("waiting for ModelVersion {spec} to exist; {serving} keeps serving"),
            );
            return d;
        }
        VersionState::Verifying => {
            set(
                &mut d,
                RolloutPhase::Verifying,
                format!("waiting for ModelVersion {spec} to be verified; {serving} keeps serving"),
            );
            return d;
        }
        VersionState::Rejected { reason, message } => {
            // Undo marks for this version too, should any exist (a re-created, rejected MV).
            revert_others(&mut d, &live, &serving, None);
            refuse(&mut d, input, spec, reason, message);
            return d;
        }
        VersionState::Ready => {}
    }

    // Verdicts of the pods already asked for the new version.
    let marked: Vec<&PodView> = live
        .iter()
        .copied()
        .filter(|p| p.target.as_deref() == Some(spec))
        .collect();
    if let Some(failed) = marked.iter().find(|p| {
        matches!(
            p.verdict(spec),
            Some(Verdict::Refused | Verdict::RolledBack | Verdict::Regressed)
        )
    }) {
        fail(&mut d, input, &live, &serving, spec, failed);
        return d;
    }

    let n = (input.canary_replicas.max(0) as usize).min(live.len());
    if restarting {
        d.rollout = RolloutStatus {
            phase: if n == 0 {
                RolloutPhase::Promoting
            } else {
                RolloutPhase::Canary
            },
            ..Default::default()
        };
    }
    let passed = |p: &&PodView| p.verdict(spec) == Some(Verdict::Passed);

    if d.rollout.phase == RolloutPhase::Canary {
        let mut canaries = marked.clone();
        for p in live.iter().filter(|p| p.target.as_deref() != Some(spec)) {
            if canaries.len() >= n {
                break;
            }
            mark(&mut d.patches, &p.name, spec);
            canaries.push(p);
        }
        let ok = canaries.iter().filter(|p| passed(p)).count();
        d.rollout.canary_pods = canaries.iter().map(|p| p.name.clone()).collect();
        d.rollout.canary_pods.sort();
        d.rollout.analysis = latest_figures(&canaries, spec).or(d.rollout.analysis.take());
        if ok < n || canaries.len() < n {
            d.rollout.message = Some(format!(
                "canary: {ok}/{n} pods passed {spec}; {serving} serves the rest"
            ));
            return d;
        }
        d.rollout.phase = RolloutPhase::Promoting;
    }

    // Promoting: every live pod takes the new version.
    let already: Vec<&PodView> = live
        .iter()
        .copied()
        .filter(|p| p.target.as_deref() == Some(spec))
        .collect();
    for p in live.iter().filter(|p| p.target.as_deref() != Some(spec)) {
        mark(&mut d.patches, &p.name, spec);
    }
    let ok = already.iter().filter(|p| passed(p)).count();
    d.rollout.analysis = latest_figures(&already, spec).or(d.rollout.analysis.take());
    if ok < live.len() {
        d.rollout.message = Some(format!("promoting: {ok}/{} pods passed {spec}", live.len()));
        return d;
    }
    // Every pod passed: the new version serves.
    d.previous = Some(serving.clone());
    d.serving = Some(spec.to_owned());
    d.target = None;
    d.rejected = None;
    let msg = format!("promoted {spec} on {} pods (was {serving})", live.len());
    d.rollout = RolloutStatus {
        phase: RolloutPhase::Idle,
        canary_pods: Vec::new(),
        analysis: d.rollout.analysis.take(),
        message: Some(msg.clone()),
    };
    d.notice = Some(Notice {
        severity: Severity::Normal,
        reason: reasons::PROMOTED.into(),
        message: msg.clone(),
        version: spec.to_owned(),
    });
    d.outcome = Some(Outcome::Promoted);
    d.rolled_back = Some((false, "Promoted".into(), msg));
    d
}

/// Sets the patch for `pod` (replacing an earlier one: a pod gets one mark per decision).
fn mark(patches: &mut Vec<PodPatch>, pod: &str, version: &str) {
    patches.retain(|p| p.pod != pod);
    patches.push(PodPatch {
        pod: pod.to_owned(),
        version: version.to_owned(),
    });
}

fn set(d: &mut Decision, phase: RolloutPhase, message: String) {
    d.rollout.phase = phase;
    d.rollout.message = Some(message);
    d.rollout.canary_pods.clear();
}

/// Marks pods that were asked for a version other than `keep` (and other than what serves)
/// back to what serves: the leftovers of an abandoned rollout.
fn revert_others(d: &mut Decision, live: &[&PodView], serving: &str, keep: Option<&str>) {
    for p in live {
        if let Some(t) = p.target.as_deref()
            && t != serving
            && Some(t) != keep
            && !d.patches.iter().any(|x| x.pod == p.name)
        {
            d.patches.push(PodPatch {
                pod: p.name.clone(),
                version: serving.to_owned(),
            });
        }
    }
}

fn refuse(d: &mut Decision, input: &Input, spec: &str, reason: &str, message: &str) {
    let serving = d.serving.clone();
    let new_rejection = input.status.rejected_version.as_deref() != Some(spec)
        || input.retry
        || input.version_recreated;
    d.rejected = Some(spec.to_owned());
    d.target = None;
    let keeps = serving
        .as_deref()
        .map(|s| format!("; {s} keeps serving"))
        .unwrap_or_default();
    let msg =
        format!("ModelVersion {spec} was refused by its verification: {reason}: {message}{keeps}");
    d.rollout = RolloutStatus {
        phase: RolloutPhase::RolledBack,
        message: Some(msg.clone()),
        ..Default::default()
    };
    if new_rejection {
        d.notice = Some(Notice {
            severity: Severity::Warning,
            reason: "Refused".into(),
            message: msg.clone(),
            version: spec.to_owned(),
        });
        d.alert = Some(AlertInfo {
            outcome: Outcome::Refused,
            version: spec.to_owned(),
            serving,
            reason: reason.to_owned(),
            message: msg.clone(),
            pod: None,
            figures: None,
        });
        d.outcome = Some(Outcome::Refused);
        d.consume_retry = input.retry;
        d.rolled_back = Some((true, "VersionRejected".into(), msg));
    }
}

fn fail(
    d: &mut Decision,
    input: &Input,
    live: &[&PodView],
    serving: &str,
    spec: &str,
    failed: &PodView,
) {
    let report = failed.report.clone().unwrap_or_default();
    let verdict = failed.verdict(spec);
    let reason = report
        .reason
        .clone()
        .unwrap_or_else(|| reasons::ROLLED_BACK.to_owned());
    let detail = report
        .message
        .clone()
        .or_else(|| report.figures.as_ref().map(describe))
        .unwrap_or_default();
    let what = match verdict {
        Some(Verdict::Refused) => "refused",
        Some(Verdict::Regressed) => "regressed",
        _ => "rolled back",
    };
    d.rejected = Some(spec.to_owned());
    d.target = None;
    d.rollout.analysis = report.figures.clone();
    let outcome;
    let msg;
    if input.auto_rollback {
        msg = format!(
            "{spec} {what} on pod {}: {reason}: {detail}; {serving} serves again",
            failed.name
        );
        for p in live.iter().filter(|p| p.target.as_deref() == Some(spec)) {
            d.patches.push(PodPatch {
                pod: p.name.clone(),
                version: serving.to_owned(),
            });
        }
        let still = live.iter().any(|p| p.serving.as_deref() == Some(spec));
        d.rollout.phase = if still {
            RolloutPhase::RollingBack
        } else {
            RolloutPhase::RolledBack
        };
        outcome = Outcome::RolledBack;
    } else {
        msg = format!(
            "{spec} {what} on pod {}: {reason}: {detail}; rollout stopped (autoRollback is false), pods keep what they serve",
            failed.name
        );
        outcome = Outcome::Stopped;
    }
    d.rollout.message = Some(msg.clone());
    d.notice = Some(Notice {
        severity: Severity::Warning,
        reason: if input.auto_rollback {
            reasons::ROLLED_BACK.into()
        } else {
            reasons::ROLLOUT_STOPPED.into()
        },
        message: msg.clone(),
        version: spec.to_owned(),
    });
    d.alert = Some(AlertInfo {
        outcome,
        version: spec.to_owned(),
        serving: Some(serving.to_owned()),
        reason: reason.clone(),
        message: msg.clone(),
        pod: Some(failed.name.clone()),
        figures: report.figures.clone(),
    });
    d.outcome = Some(outcome);
    d.rolled_back = Some((true, reason, msg));
}

fn hold(d: &mut Decision, input: &Input, live: &[&PodView], serving: &str, spec: &str) {
    d.target = None;
    if input.auto_rollback {
        // Make sure no pod is still asked for the rejected version (a patch may have failed).
        for p in live.iter().filter(|p| p.target.as_deref() == Some(spec)) {
            d.patches.push(PodPatch {
                pod: p.name.clone(),
                version: serving.to_owned(),
            });
        }
        if d.rollout.phase == RolloutPhase::RollingBack
            && !live.iter().any(|p| p.serving.as_deref() == Some(spec))
        {
            d.rollout.phase = RolloutPhase::RolledBack;
        }
    }
    if !matches!(
        d.rollout.phase,
        RolloutPhase::RollingBack | RolloutPhase::RolledBack
    ) && input.auto_rollback
    {
        d.rollout.phase = RolloutPhase::RolledBack;
    }
    let base = d
        .rollout
        .message
        .clone()
        .unwrap_or_else(|| format!("{spec} was rejected"));
    let suffix = "; holding: change spec.modelVersion, re-create the ModelVersion or set the kinfer.dev/retry annotation to try again";
    if !base.ends_with(suffix) {
        d.rollout.message = Some(format!("{base}{suffix}"));
    }
}

fn latest_figures(pods: &[&PodView], spec: &str) -> Option<AnalysisFigures> {
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
    if let Some(e) = f.error_rate {
        parts.push(format!("error rate {:.2}%", e * 100.0));
    }
    if let Some(x) = f.drift {
        parts.push(format!("drift {x:.3}"));
    }
    if let Some(r) = f.requests {
        parts.push(format!("{r} requests"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfer_api::report::AnalysisPhase;

    fn pod(name: &str, secs: i64) -> PodView {
        PodView {
            name: name.into(),
            created: Some(Timestamp::from_second(1_700_000_000 + secs).unwrap()),
            ..Default::default()
        }
    }

    fn marked(mut p: PodView, v: &str) -> PodView {
        p.target = Some(v.into());
        p
    }

    fn report(mut p: PodView, v: &str, verdict: Option<Verdict>) -> PodView {
        p.report = Some(AnalysisReport {
            version: v.into(),
            previous_version: Some("v7".into()),
            phase: if verdict.is_some() {
                AnalysisPhase::Done
            } else {
                AnalysisPhase::Analysing
            },
            verdict,
            reason: matches!(verdict, Some(Verdict::RolledBack | Verdict::Regressed))
                .then(|| reasons::LATENCY_REGRESSION.into()),
            message: matches!(verdict, Some(Verdict::RolledBack | Verdict::Regressed))
                .then(|| "p99 20.0ms > 1.5 x baseline 1.0ms".into()),
            figures: Some(AnalysisFigures {
                p99: Some(0.02),
                baseline_p99: Some(0.001),
                requests: Some(500),
                ..Default::default()
            }),
            ..Default::default()
        });
        if matches!(verdict, Some(Verdict::Passed | Verdict::Regressed)) {
            p.serving = Some(v.into());
        }
        p
    }

    fn serving(v: &str) -> InferenceServiceStatus {
        InferenceServiceStatus {
            serving_version: Some(v.into()),
            rollout: Some(RolloutStatus::default()),
            ..Default::default()
        }
    }

    fn input<'a>(spec: &'a str, st: &'a InferenceServiceStatus, pods: &'a [PodView]) -> Input<'a> {
        Input {
            spec_version: spec,
            status: st,
            target: VersionState::Ready,
            pods,
            canary_replicas: 1,
            auto_rollback: true,
            retry: false,
            version_recreated: false,
        }
    }

    /// Applies a decision to the status (what the controller writes), for chained steps.
    fn apply(d: &Decision) -> InferenceServiceStatus {
        InferenceServiceStatus {
            serving_version: d.serving.clone(),
            previous_version: d.previous.clone(),
            target_version: d.target.clone(),
            rejected_version: d.rejected.clone(),
            rollout: Some(d.rollout.clone()),
            ..Default::default()
        }
    }

    fn pods3() -> Vec<PodView> {
        vec![pod("c", 30), pod("a", 10), pod("b", 20)]
    }

    #[test]
    fn first_version_serves_once_verified() {
        let st = InferenceServiceStatus::default();
        let pods = pods3();
        let mut i = input("v7", &st, &pods);
        i.target = VersionState::Verifying;
        let d = decide(&i);
        assert_eq!(d.rollout.phase, RolloutPhase::Verifying);
        assert_eq!(d.serving, None);
        assert!(d.patches.is_empty());
        i.target = VersionState::Ready;
        let d = decide(&i);
        // Verified, but no pod serves it yet: nothing is called serving.
        assert_eq!(d.serving, None);
        assert_eq!(d.target.as_deref(), Some("v7"));
        assert_eq!(d.rollout.phase, RolloutPhase::Promoting);
        assert!(d.outcome.is_none() && d.notice.is_none());
        let mut pods = pods;
        pods[0].serving = Some("v7".into());
        let mut i = input("v7", &st, &pods);
        i.target = VersionState::Ready;
        let d = decide(&i);
        assert_eq!(d.serving.as_deref(), Some("v7"));
        assert_eq!(d.rollout.phase, RolloutPhase::Idle);
        assert!(
            d.patches.is_empty(),
            "first version: pods load spec.modelVersion themselves"
        );
        assert_eq!(d.outcome, Some(Outcome::Promoted));
    }

    #[test]
    fn idle_when_spec_names_what_serves() {
        let st = serving("v7");
        let pods = pods3();
        let d = decide(&input("v7", &st, &pods));
        assert_eq!(d.rollout.phase, RolloutPhase::Idle);
        assert!(d.patches.is_empty() && d.notice.is_none() && d.outcome.is_none());
        // Deciding again from the result is a fixed point.
        let st2 = apply(&d);
        assert_eq!(decide(&input("v7", &st2, &pods)), d);
    }

    #[test]
    fn verifying_waits_for_the_job() {
        let st = serving("v7");
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.target = VersionState::Verifying;
        let d = decide(&i);
        assert_eq!(d.rollout.phase, RolloutPhase::Verifying);
        assert_eq!(d.target.as_deref(), Some("v8"));
        assert!(d.patches.is_empty());
        i.target = VersionState::Missing;
        assert!(decide(&i).rollout.message.unwrap().contains("to exist"));
    }

    #[test]
    fn canary_marks_the_oldest_pods_first() {
        let st = serving("v7");
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.canary_replicas = 2;
        let d = decide(&i);
        assert_eq!(d.rollout.phase, RolloutPhase::Canary);
        assert_eq!(
            d.patches,
            vec![
                PodPatch {
                    pod: "a".into(),
                    version: "v8".into()
                },
                PodPatch {
                    pod: "b".into(),
                    version: "v8".into()
                }
            ]
        );
        assert_eq!(d.rollout.canary_pods, ["a", "b"]);
        assert!(d.rollout.message.as_ref().unwrap().contains("0/2"));
        // Same input again: the same decision (deterministic).
        assert_eq!(decide(&i), d);
    }

    #[test]
    fn canary_waits_then_promotes_then_serves() {
        let st = serving("v7");
        let pods = pods3();
        let d1 = decide(&input("v8", &st, &pods));
        assert_eq!(d1.patches.len(), 1);
        let st1 = apply(&d1);
        // The canary is marked and analysing: wait.
        let pods = vec![
            report(marked(pod("a", 10), "v8"), "v8", None),
            pod("b", 20),
            pod("c", 30),
        ];
        let d2 = decide(&input("v8", &st1, &pods));
        assert_eq!(d2.rollout.phase, RolloutPhase::Canary);
        assert!(d2.patches.is_empty());
        // It passed: mark the rest.
        let pods = vec![
            report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::Passed)),
            pod("b", 20),
            pod("c", 30),
        ];
        let d3 = decide(&input("v8", &apply(&d2), &pods));
        assert_eq!(d3.rollout.phase, RolloutPhase::Promoting);
        let patched: Vec<_> = d3.patches.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(patched, ["b", "c"]);
        assert_eq!(d3.serving.as_deref(), Some("v7"));
        // All passed: promoted.
        let pods: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(k, n)| report(marked(pod(n, k as i64), "v8"), "v8", Some(Verdict::Passed)))
            .collect();
        let d4 = decide(&input("v8", &apply(&d3), &pods));
        assert_eq!(d4.rollout.phase, RolloutPhase::Idle);
        assert_eq!(d4.serving.as_deref(), Some("v8"));
        assert_eq!(d4.previous.as_deref(), Some("v7"));
        assert_eq!(d4.target, None);
        assert_eq!(d4.outcome, Some(Outcome::Promoted));
        assert_eq!(d4.notice.as_ref().unwrap().reason, "Promoted");
        assert!(!d4.rolled_back.as_ref().unwrap().0);
        assert!(d4.patches.is_empty());
        // And then it is idle.
        let d5 = decide(&input("v8", &apply(&d4), &pods));
        assert_eq!(d5.outcome, None);
        assert!(d5.patches.is_empty());
    }

    #[test]
    fn zero_canaries_promote_everything_at_once() {
        let st = serving("v7");
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.canary_replicas = 0;
        let d = decide(&i);
        assert_eq!(d.rollout.phase, RolloutPhase::Promoting);
        assert_eq!(d.patches.len(), 3);
    }

    #[test]
    fn no_pods_promotes_at_once() {
        let st = serving("v7");
        let d = decide(&input("v8", &st, &[]));
        assert_eq!(d.serving.as_deref(), Some("v8"));
    }

    #[test]
    fn canary_regression_rolls_back_and_holds() {
        let st = serving("v7");
        let pods = pods3();
        let st1 = apply(&decide(&input("v8", &st, &pods)));
        let mut a = report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::RolledBack));
        a.serving = Some("v7".into());
        let pods = vec![a, pod("b", 20), pod("c", 30)];
        let d = decide(&input("v8", &st1, &pods));
        assert_eq!(d.rollout.phase, RolloutPhase::RolledBack);
        assert_eq!(d.rejected.as_deref(), Some("v8"));
        assert_eq!(d.serving.as_deref(), Some("v7"));
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "a".into(),
                version: "v7".into()
            }]
        );
        assert_eq!(d.outcome, Some(Outcome::RolledBack));
        let n = d.notice.as_ref().unwrap();
        assert_eq!(
            (n.severity, n.reason.as_str()),
            (Severity::Warning, "RolledBack")
        );
        assert!(
            n.message.contains("LatencyRegression") && n.message.contains("pod a"),
            "{}",
            n.message
        );
        let alert = d.alert.as_ref().unwrap();
        assert_eq!(alert.figures.as_ref().unwrap().p99, Some(0.02));
        assert_eq!(
            d.rollout.analysis.as_ref().unwrap().baseline_p99,
            Some(0.001)
        );
        let (is_true, reason, _) = d.rolled_back.clone().unwrap();
        assert!(is_true);
        assert_eq!(reason, "LatencyRegression");

        // GitOps hold: the spec still names v8; nothing is retried, nothing is announced again.
        let mut a = pod("a", 10);
        a.target = Some("v7".into());
        let pods = vec![a, pod("b", 20), pod("c", 30)];
        let st2 = apply(&d);
        let h = decide(&input("v8", &st2, &pods));
        assert_eq!(h.rollout.phase, RolloutPhase::RolledBack);
        assert!(h.patches.is_empty());
        assert!(h.notice.is_none() && h.alert.is_none() && h.outcome.is_none());
        assert!(
            h.rollout
                .message
                .as_ref()
                .unwrap()
                .contains("kinfer.dev/retry")
        );
        assert_eq!(h.serving.as_deref(), Some("v7"));
        // ... and holding is a fixed point.
        assert_eq!(decide(&input("v8", &apply(&h), &pods)), h);
    }

    #[test]
    fn refused_verdict_during_promotion_reverts_every_marked_pod() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Promoting,
            ..Default::default()
        });
        let mut c = report(marked(pod("c", 30), "v8"), "v8", Some(Verdict::Refused));
        c.report.as_mut().unwrap().reason = Some(reasons::SIGNATURE_INVALID.into());
        let pods = vec![
            report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::Passed)),
            report(marked(pod("b", 20), "v8"), "v8", Some(Verdict::Passed)),
            c,
        ];
        let d = decide(&input("v8", &st, &pods));
        let reverted: Vec<_> = d
            .patches
            .iter()
            .map(|p| (p.pod.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(reverted, [("a", "v7"), ("b", "v7"), ("c", "v7")]);
        // Pods a and b still serve v8 until their watchers swap back.
        assert_eq!(d.rollout.phase, RolloutPhase::RollingBack);
        assert!(d.rollout.message.as_ref().unwrap().contains("refused"));
        // Once no pod serves v8 any more: RolledBack.
        let st2 = apply(&d);
        let pods: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let mut p = marked(pod(n, k as i64), "v7");
                p.serving = Some("v7".into());
                p
            })
            .collect();
        let d2 = decide(&input("v8", &st2, &pods));
        assert_eq!(d2.rollout.phase, RolloutPhase::RolledBack);
        assert!(d2.alert.is_none());
    }

    #[test]
    fn retry_annotation_releases_the_hold_and_is_consumed() {
        let mut st = serving("v7");
        st.rejected_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::RolledBack,
            message: Some("v8 rolled back".into()),
            ..Default::default()
        });
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.retry = true;
        let d = decide(&i);
        assert!(d.consume_retry);
        assert_eq!(d.rejected, None);
        assert_eq!(d.rollout.phase, RolloutPhase::Canary);
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "a".into(),
                version: "v8".into()
            }]
        );
    }

    #[test]
    fn recreated_model_version_releases_the_hold() {
        let mut st = serving("v7");
        st.rejected_version = Some("v8".into());
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.version_recreated = true;
        let d = decide(&i);
        assert!(!d.consume_retry);
        assert_eq!(d.rollout.phase, RolloutPhase::Canary);
    }

    #[test]
    fn a_new_spec_version_after_a_rollback_rolls_out() {
        let mut st = serving("v7");
        st.rejected_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::RolledBack,
            ..Default::default()
        });
        let pods = pods3();
        let d = decide(&input("v9", &st, &pods));
        assert_eq!(d.rollout.phase, RolloutPhase::Canary);
        assert_eq!(d.target.as_deref(), Some("v9"));
        assert_eq!(d.patches[0].version, "v9");
    }

    #[test]
    fn spec_back_to_serving_cancels_and_clears_the_rejection() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Canary,
            canary_pods: vec!["a".into()],
            ..Default::default()
        });
        let pods = vec![marked(pod("a", 10), "v8"), pod("b", 20)];
        let d = decide(&input("v7", &st, &pods));
        assert_eq!(d.rollout.phase, RolloutPhase::Idle);
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "a".into(),
                version: "v7".into()
            }]
        );
        assert!(d.rollout.message.as_ref().unwrap().contains("cancelled"));
        assert_eq!(d.target, None);
    }

    #[test]
    fn spec_change_mid_rollout_abandons_the_old_target() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Canary,
            ..Default::default()
        });
        let pods = vec![marked(pod("a", 10), "v8"), pod("b", 20)];
        let d = decide(&input("v9", &st, &pods));
        // Pod a is the oldest: it is re-marked for v9 (not first reverted to v7).
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "a".into(),
                version: "v9".into()
            }]
        );
        assert_eq!(d.rollout.canary_pods, ["a"]);
    }

    #[test]
    fn rejected_model_version_is_refused_once() {
        let st = serving("v7");
        let pods = pods3();
        let mut i = input("v8", &st, &pods);
        i.target = VersionState::Rejected {
            reason: "SignatureInvalid".into(),
            message: "no trusted key verifies model.sig".into(),
        };
        let d = decide(&i);
        assert_eq!(d.rejected.as_deref(), Some("v8"));
        assert!(d.patches.is_empty());
        assert_eq!(d.outcome, Some(Outcome::Refused));
        assert_eq!(d.notice.as_ref().unwrap().reason, "Refused");
        assert_eq!(d.alert.as_ref().unwrap().outcome, Outcome::Refused);
        // Held afterwards: no new event, no alert.
        let st2 = apply(&d);
        let mut i2 = input("v8", &st2, &pods);
        i2.target = i.target.clone();
        let h = decide(&i2);
        assert!(h.notice.is_none() && h.alert.is_none());
        assert_eq!(h.rejected.as_deref(), Some("v8"));
    }

    #[test]
    fn without_auto_rollback_the_rollout_stops_in_place() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Canary,
            ..Default::default()
        });
        // What the watcher writes when a version regresses with autoRollback off (asserted
        // from the real watcher in tests/runtime/test_watcher.py): it keeps serving, Regressed.
        let pods = vec![
            report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::Regressed)),
            pod("b", 20),
        ];
        let mut i = input("v8", &st, &pods);
        i.auto_rollback = false;
        let d = decide(&i);
        assert!(d.patches.is_empty(), "no revert and nothing promoted");
        assert_eq!(d.outcome, Some(Outcome::Stopped));
        assert_eq!(d.rollout.phase, RolloutPhase::Canary);
        assert_eq!(d.notice.as_ref().unwrap().reason, reasons::ROLLOUT_STOPPED);
        assert!(
            d.rollout
                .message
                .as_ref()
                .unwrap()
                .contains("v8 regressed on pod a")
        );
        assert_eq!(d.alert.as_ref().unwrap().outcome, Outcome::Stopped);
        assert_eq!(d.rejected.as_deref(), Some("v8"));
        assert_eq!(
            d.serving.as_deref(),
            Some("v7"),
            "the service's version is not moved"
        );
        // The next reconcile holds: pod b is never asked for v8.
        let held = apply(&d);
        let mut i2 = input("v8", &held, &pods);
        i2.auto_rollback = false;
        let d2 = decide(&i2);
        assert!(
            d2.patches.iter().all(|p| p.version != "v8"),
            "{:?}",
            d2.patches
        );
        assert!(d2.notice.is_none() && d2.alert.is_none());
    }

    #[test]
    fn a_dead_canary_is_replaced_and_terminating_pods_are_ignored() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Canary,
            canary_pods: vec!["a".into()],
            ..Default::default()
        });
        let mut a = marked(pod("a", 10), "v8");
        a.terminating = true;
        let pods = vec![a, pod("b", 20), pod("c", 30)];
        let d = decide(&input("v8", &st, &pods));
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "b".into(),
                version: "v8".into()
            }]
        );
        assert_eq!(d.rollout.canary_pods, ["b"]);
    }

    #[test]
    fn new_pods_during_promotion_get_marked() {
        let mut st = serving("v7");
        st.target_version = Some("v8".into());
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Promoting,
            ..Default::default()
        });
        let pods = vec![
            report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::Passed)),
            report(marked(pod("b", 20), "v8"), "v8", Some(Verdict::Passed)),
            pod("new", 99),
        ];
        let d = decide(&input("v8", &st, &pods));
        assert_eq!(
            d.patches,
            vec![PodPatch {
                pod: "new".into(),
                version: "v8".into()
            }]
        );
        assert_eq!(d.serving.as_deref(), Some("v7"));
        assert!(d.rollout.message.unwrap().contains("2/3"));
    }

    #[test]
    fn describes_figures() {
        let f = AnalysisFigures {
            p99: Some(0.02),
            baseline_p99: Some(0.001),
            error_rate: Some(0.0),
            drift: Some(0.31),
            requests: Some(1200),
        };
        assert_eq!(
            describe(&f),
            "p99 20.0ms (baseline 1.0ms), error rate 0.00%, drift 0.310, 1200 requests"
        );
    }
}
