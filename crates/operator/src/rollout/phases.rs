//! One function per rollout situation, each a step of [`super::decide`]: the first version of
//! a service, a spec that names what serves, the target's verification, the canary and the
//! promotion to every pod.

use kinfer_api::{
    inference_service::{RolloutPhase, RolloutStatus},
    report::{Verdict, reasons},
};

use super::{
    Decision, Input, Notice, Outcome, PodView, Severity, VersionState, latest_figures, mark,
    outcomes, revert_others, set,
};

/// Nothing serves yet: pods load `spec.modelVersion` by themselves; it serves once verified
/// and a pod serves it.
pub(super) fn first_version(d: &mut Decision, input: &Input, live: &[&PodView]) {
    let spec = input.spec_version;
    d.target = Some(spec.to_owned());
    match &input.target {
        VersionState::Missing => set(
            d,
            RolloutPhase::Verifying,
            format!("waiting for ModelVersion {spec} to exist"),
        ),
        VersionState::Verifying => set(
            d,
            RolloutPhase::Verifying,
            format!("waiting for ModelVersion {spec} to be verified"),
        ),
        VersionState::Rejected { reason, message } => {
            outcomes::refuse(d, input, spec, reason, message)
        }
        VersionState::Ready if !live.iter().any(|p| p.serving.as_deref() == Some(spec)) => {
            // Verified, but no pod serves it yet (pods starting, or Pending: the Ready
            // condition says why). servingVersion names only what a pod actually serves.
            set(
                d,
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
}

/// The spec names what serves: nothing to roll out; the marks of an abandoned rollout are
/// undone, and a hold on a rejected version ends (`RolledBack=False`, `Reverted`).
pub(super) fn settled(d: &mut Decision, live: &[&PodView], serving: &str) {
    let phase = d.rollout.phase;
    revert_others(d, live, serving, None);
    let was_running = matches!(
        phase,
        RolloutPhase::Verifying | RolloutPhase::Canary | RolloutPhase::Promoting
    );
    let message = match (&d.target, was_running) {
        (Some(t), true) if t != serving => {
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
    // The spec names what serves again (a revert in git): a hold on a rejected version ends.
    if let Some(held) = d.rejected.take() {
        d.rolled_back = Some((
            false,
            "Reverted".into(),
            format!("spec.modelVersion names {serving} again; the hold on {held} ended"),
        ));
    }
    d.rollout = RolloutStatus {
        phase: RolloutPhase::Idle,
        analysis: d.rollout.analysis.clone(),
        message: Some(message),
        ..Default::default()
    };
}

/// Whether the target may be rolled out; else the decision waits for (or refuses) it.
pub(super) fn verified(d: &mut Decision, input: &Input, live: &[&PodView], serving: &str) -> bool {
    let spec = input.spec_version;
    match &input.target {
        VersionState::Missing => {
            set(
                d,
                RolloutPhase::Verifying,
                format!("waiting for ModelVersion {spec} to exist; {serving} keeps serving"),
            );
            false
        }
        VersionState::Verifying => {
            set(
                d,
                RolloutPhase::Verifying,
                format!("waiting for ModelVersion {spec} to be verified; {serving} keeps serving"),
            );
            false
        }
        VersionState::Rejected { reason, message } => {
            // Undo marks for this version too, should any exist (a re-created, rejected MV).
            revert_others(d, live, serving, None);
            outcomes::refuse(d, input, spec, reason, message);
            false
        }
        VersionState::Ready => true,
    }
}

/// The canary: the `canaries` oldest pods are asked for the new version; true once all of them
/// passed (the rollout moves on to promoting).
pub(super) fn canary(
    d: &mut Decision,
    live: &[&PodView],
    marked: Vec<&PodView>,
    serving: &str,
    spec: &str,
    canaries: usize,
) -> bool {
    let mut chosen = marked;
    for p in live.iter().filter(|p| p.target.as_deref() != Some(spec)) {
        if chosen.len() >= canaries {
            break;
        }
        mark(&mut d.patches, &p.name, spec);
        chosen.push(p);
    }
    let ok = chosen.iter().filter(|p| passed(p, spec)).count();
    d.rollout.canary_pods = chosen.iter().map(|p| p.name.clone()).collect();
    d.rollout.canary_pods.sort();
    d.rollout.analysis = latest_figures(&chosen, spec).or(d.rollout.analysis.take());
    if ok < canaries || chosen.len() < canaries {
        d.rollout.message = Some(format!(
            "canary: {ok}/{canaries} pods passed {spec}; {serving} serves the rest"
        ));
        return false;
    }
    d.rollout.phase = RolloutPhase::Promoting;
    true
}

/// Promoting: every live pod takes the new version; once all passed, it serves.
pub(super) fn promoting(d: &mut Decision, live: &[&PodView], serving: &str, spec: &str) {
    let already: Vec<&PodView> = live
        .iter()
        .copied()
        .filter(|p| p.target.as_deref() == Some(spec))
        .collect();
    for p in live.iter().filter(|p| p.target.as_deref() != Some(spec)) {
        mark(&mut d.patches, &p.name, spec);
    }
    let ok = already.iter().filter(|p| passed(p, spec)).count();
    d.rollout.analysis = latest_figures(&already, spec).or(d.rollout.analysis.take());
    if ok < live.len() {
        d.rollout.message = Some(format!("promoting: {ok}/{} pods passed {spec}", live.len()));
        return;
    }
    d.previous = Some(serving.to_owned());
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
}

fn passed(p: &PodView, spec: &str) -> bool {
    p.verdict(spec) == Some(Verdict::Passed)
}
