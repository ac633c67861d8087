//! The state machine's cases, one test per path through [`super::decide`].

use super::*;
use kinfer_api::report::{AnalysisPhase, reasons};

pub(super) fn pod(name: &str, secs: i64) -> PodView {
    PodView {
        name: name.into(),
        created: Some(Timestamp::from_second(1_700_000_000 + secs).unwrap()),
        ..Default::default()
    }
}

pub(super) fn marked(mut p: PodView, v: &str) -> PodView {
    p.target = Some(v.into());
    p
}

pub(super) fn report(mut p: PodView, v: &str, verdict: Option<Verdict>) -> PodView {
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

pub(super) fn serving(v: &str) -> InferenceServiceStatus {
    InferenceServiceStatus {
        serving_version: Some(v.into()),
        rollout: Some(RolloutStatus::default()),
        ..Default::default()
    }
}

pub(super) fn input<'a>(
    spec: &'a str,
    st: &'a InferenceServiceStatus,
    pods: &'a [PodView],
) -> Input<'a> {
    Input {
        spec_version: spec,
        status: st,
        target: VersionState::Ready,
        pods,
        canary_replicas: 1,
        auto_rollback: true,
        retry: false,
        version_recreated: false,
        target_uid: Some("uid-target"),
    }
}

/// Applies a decision to the status (what the controller writes), for chained steps.
pub(super) fn apply(d: &Decision) -> InferenceServiceStatus {
    InferenceServiceStatus {
        serving_version: d.serving.clone(),
        previous_version: d.previous.clone(),
        target_version: d.target.clone(),
        rejected_version: d.rejected.clone(),
        rejected_version_uid: d.rejected_uid.clone(),
        rollout: Some(d.rollout.clone()),
        ..Default::default()
    }
}

pub(super) fn pods3() -> Vec<PodView> {
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
        vec![PodPatch::new("a", "v8"), PodPatch::new("b", "v8")]
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
    assert_eq!(d.patches, vec![PodPatch::new("a", "v7")]);
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
    assert_eq!(d.patches, vec![PodPatch::new("a", "v8")]);
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
    assert_eq!(d.patches, vec![PodPatch::new("a", "v7")]);
    assert!(d.rollout.message.as_ref().unwrap().contains("cancelled"));
    assert_eq!(d.target, None);
}

#[test]
fn reverting_the_spec_during_a_hold_ends_it() {
    let mut st = serving("v7");
    st.rejected_version = Some("v8".into());
    st.rollout = Some(RolloutStatus {
        phase: RolloutPhase::RolledBack,
        ..Default::default()
    });
    let pods = pods3();
    let d = decide(&input("v7", &st, &pods));
    assert_eq!(
        (d.rejected.as_deref(), d.rollout.phase),
        (None, RolloutPhase::Idle)
    );
    let (rolled_back, reason, msg) = d.rolled_back.clone().unwrap();
    assert!(
        !rolled_back && reason == "Reverted" && msg.contains("v8"),
        "{msg}"
    );
    // Once ended, the next reconcile leaves the condition alone.
    assert_eq!(decide(&input("v7", &apply(&d), &pods)).rolled_back, None);
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
    assert_eq!(d.patches, vec![PodPatch::new("a", "v9")]);
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
    assert_eq!(d.patches, vec![PodPatch::new("b", "v8")]);
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
    assert_eq!(d.patches, vec![PodPatch::new("new", "v8")]);
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
        ..Default::default()
    };
    assert_eq!(
        describe(&f),
        "p99 20.0ms (baseline 1.0ms), error rate 0.00%, drift 0.310, 1200 requests"
    );
    let paired = AnalysisFigures {
        latency_ratio: Some(1.52),
        latency_ratio_low: Some(1.41),
        baseline_requests: Some(1190),
        ..f
    };
    assert_eq!(
        describe(&paired),
        "p99 20.0ms (baseline 1.0ms), latency 1.52× baseline (1.41–∞), error rate 0.00%, drift 0.310, 1200 requests (1190 on the baseline)"
    );
    let replayed = AnalysisFigures {
        replayed: Some(1500),
        ..paired
    };
    assert!(
        describe(&replayed)
            .ends_with("drift 0.310, 1500 recent requests replayed on both versions"),
        "{}",
        describe(&replayed)
    );
}

#[test]
fn an_inconclusive_analysis_holds_the_rollout_without_a_revert() {
    let mut st = serving("v7");
    st.target_version = Some("v8".into());
    st.rollout = Some(RolloutStatus {
        phase: RolloutPhase::Canary,
        ..Default::default()
    });
    // What the watcher writes when its analysis reached maxWindow without evidence either way
    // (asserted from the real watcher in tests/runtime/test_paired.py).
    let pods = vec![
        report(
            marked(pod("a", 10), "v8"),
            "v8",
            Some(Verdict::Inconclusive),
        ),
        pod("b", 20),
    ];
    let i = input("v8", &st, &pods);
    assert!(i.auto_rollback);
    let d = decide(&i);
    assert!(d.patches.is_empty(), "no revert and nothing promoted");
    assert_eq!(d.outcome, Some(Outcome::Stopped));
    assert_eq!(d.notice.as_ref().unwrap().reason, reasons::ROLLOUT_STOPPED);
    let msg = d.rollout.message.clone().unwrap();
    assert!(msg.contains("v8 was not judged on pod a"), "{msg}");
    assert!(msg.contains("rollout held"), "{msg}");
    assert_eq!(d.rejected.as_deref(), Some("v8"));
    // The next reconcile holds too, and still reverts nothing.
    let mut st2 = st.clone();
    st2.rejected_version = d.rejected.clone();
    st2.rollout = Some(d.rollout.clone());
    let h = decide(&input("v8", &st2, &pods));
    assert!(h.patches.is_empty(), "{:?}", h.patches);
    assert_ne!(h.rollout.phase, RolloutPhase::RolledBack);
}
