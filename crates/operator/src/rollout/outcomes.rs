//! How a rollout ends badly: the target refused by its verification ([`refuse`]), a pod's
//! verdict against it ([`fail`]: rolled back, or stopped with `autoRollback: false`), and the
//! GitOps hold that follows while the spec still names the rejected version ([`hold`]).

use kinfer_api::{
    inference_service::{RolloutPhase, RolloutStatus},
    report::{Verdict, reasons},
};

use super::{AlertInfo, Decision, Input, Notice, Outcome, PodPatch, PodView, Severity, describe};

pub(super) fn refuse(d: &mut Decision, input: &Input, spec: &str, reason: &str, message: &str) {
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

pub(super) fn fail(
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
        Some(Verdict::Inconclusive) => "was not judged",
        _ => "rolled back",
    };
    // An inconclusive analysis is no regression: nothing is swapped back, the rollout pauses.
    let revert = input.auto_rollback && verdict != Some(Verdict::Inconclusive);
    d.rejected = Some(spec.to_owned());
    d.target = None;
    d.rollout.analysis = report.figures.clone();
    let outcome;
    let msg;
    if revert {
        msg = format!(
            "{spec} {what} on pod {}: {reason}: {detail}; {serving} serves again",
            failed.name
        );
        for p in live.iter().filter(|p| p.target.as_deref() == Some(spec)) {
            d.patches.push(PodPatch::new(&p.name, serving));
        }
        let still = live.iter().any(|p| p.serving.as_deref() == Some(spec));
        d.rollout.phase = if still {
            RolloutPhase::RollingBack
        } else {
            RolloutPhase::RolledBack
        };
        outcome = Outcome::RolledBack;
    } else {
        let why = if input.auto_rollback {
            "rollout held"
        } else {
            "rollout stopped (autoRollback is false)"
        };
        msg = format!(
            "{spec} {what} on pod {}: {reason}: {detail}; {why}, pods keep what they serve",
            failed.name
        );
        outcome = Outcome::Stopped;
    }
    d.rollout.message = Some(msg.clone());
    d.notice = Some(Notice {
        severity: Severity::Warning,
        reason: if revert {
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

pub(super) fn hold(d: &mut Decision, input: &Input, live: &[&PodView], serving: &str, spec: &str) {
    d.target = None;
    // After an inconclusive analysis the canaries keep the version: the rollout only pauses.
    let paused = live
        .iter()
        .any(|p| p.verdict(spec) == Some(Verdict::Inconclusive));
    let revert = input.auto_rollback && !paused;
    if revert {
        // Make sure no pod is still asked for the rejected version (a patch may have failed).
        for p in live.iter().filter(|p| p.target.as_deref() == Some(spec)) {
            d.patches.push(PodPatch::new(&p.name, serving));
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
    ) && revert
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
