//! Rollouts decided step after step, each decision applied to the status as the controller
//! writes it: the paths the tests against a cluster found wrong — a rollout that waited for its
//! verification must still start at the canary, a rejection must hold even when the service was
//! rolled back before (it must not be taken for a re-created ModelVersion, over and over), and a
//! retry must not be rejected again by the report that caused the hold.

use super::tests::{apply, input, marked, pod, pods3, report, serving};
use super::*;

#[test]
fn a_rollout_that_waited_for_verification_starts_at_the_canary() {
    let st = serving("v7");
    let pods = pods3();
    let mut i = input("v8", &st, &pods);
    i.target = VersionState::Verifying;
    let waiting = decide(&i);
    assert_eq!(waiting.rollout.phase, RolloutPhase::Verifying);
    assert!(waiting.patches.is_empty());
    // Verified: one canary (the oldest pod), never every pod at once.
    let st1 = apply(&waiting);
    let d = decide(&input("v8", &st1, &pods));
    assert_eq!(d.rollout.phase, RolloutPhase::Canary, "{:?}", d.rollout);
    assert_eq!(d.patches, vec![PodPatch::new("a", "v8")]);
    assert_eq!(d.rollout.canary_pods, ["a"]);
}

#[test]
fn a_second_rejection_holds_instead_of_retrying_in_a_loop() {
    // Rolled back before (v5), so RolledBack is already True; then a new ModelVersion is
    // rolled out and refused by its canary.
    let mut st = serving("v2");
    st.rejected_version = Some("v5".into());
    st.rejected_version_uid = Some("uid-v5".into());
    let pods = pods3();
    let mut i = input("pin", &st, &pods);
    i.target_uid = Some("uid-pin");
    let st1 = apply(&decide(&i));
    let mut a = report(marked(pod("a", 10), "pin"), "pin", Some(Verdict::Refused));
    a.serving = Some("v2".into());
    let pods = vec![a, pod("b", 20), pod("c", 30)];
    let mut i = input("pin", &st1, &pods);
    i.target_uid = Some("uid-pin");
    let refused = decide(&i);
    assert_eq!(refused.rejected.as_deref(), Some("pin"));
    assert_eq!(refused.rejected_uid.as_deref(), Some("uid-pin"));
    assert!(refused.alert.is_some());
    // The next reconciles: the same ModelVersion object, so a hold — no mark, no alert.
    let st2 = apply(&refused);
    assert!(!version_recreated(&st2, "pin", Some("uid-pin")));
    let mut back = pod("a", 10);
    back.target = Some("v2".into());
    let pods = vec![back, pod("b", 20), pod("c", 30)];
    let mut i = input("pin", &st2, &pods);
    i.target_uid = Some("uid-pin");
    let held = decide(&i);
    assert_eq!(held.rollout.phase, RolloutPhase::RolledBack);
    assert!(held.patches.is_empty() && held.alert.is_none() && held.outcome.is_none());
    assert_eq!(held.rejected_uid.as_deref(), Some("uid-pin"));
    // Deleted and created again (a new uid): tried again, from the canary.
    assert!(version_recreated(&st2, "pin", Some("uid-pin-2")));
    i.target_uid = Some("uid-pin-2");
    i.version_recreated = true;
    let again = decide(&i);
    assert_eq!(again.rollout.phase, RolloutPhase::Canary);
    assert_eq!(again.patches.len(), 1);
}

#[test]
fn a_rejection_recorded_without_a_uid_holds_and_records_it() {
    let mut st = serving("v2");
    st.rejected_version = Some("pin".into());
    st.rollout = Some(RolloutStatus {
        phase: RolloutPhase::RolledBack,
        ..Default::default()
    });
    assert!(!version_recreated(&st, "pin", Some("uid-pin")));
    let pods = pods3();
    let mut i = input("pin", &st, &pods);
    i.target_uid = Some("uid-pin");
    let d = decide(&i);
    assert_eq!(d.rollout.phase, RolloutPhase::RolledBack);
    assert!(d.patches.is_empty());
    assert_eq!(d.rejected_uid.as_deref(), Some("uid-pin"));
    // Another version: the rejection and its uid stay with the version they are about.
    let mut i = input("v9", &st, &pods);
    i.target_uid = Some("uid-v9");
    let d = decide(&i);
    assert_eq!(d.rejected.as_deref(), Some("pin"));
    assert_eq!(d.rejected_uid, None, "no uid was recorded for pin");
}

#[test]
fn a_retry_is_judged_by_its_own_report_not_the_one_that_caused_the_hold() {
    // v8 was rolled back on the canary `a`: it serves v7 again, is asked for v7, and its report
    // is the rollback of v8.
    let mut a = report(marked(pod("a", 10), "v7"), "v8", Some(Verdict::RolledBack));
    a.serving = Some("v7".into());
    a.resource_version = Some("41".into());
    let pods = vec![a, pod("b", 20), pod("c", 30)];
    let mut st = serving("v7");
    st.rejected_version = Some("v8".into());
    st.rollout = Some(RolloutStatus {
        phase: RolloutPhase::RolledBack,
        ..Default::default()
    });
    let held = decide(&input("v8", &st, &pods));
    assert_eq!(held.rejected.as_deref(), Some("v8"));
    assert!(held.patches.is_empty(), "{:?}", held.patches);

    let mut i = input("v8", &st, &pods);
    i.retry = true;
    let retry = decide(&i);
    assert!(retry.consume_retry);
    assert_eq!(retry.rejected, None);
    // The canary is asked for v8 again and loses the old verdict in the same patch, which
    // applies only to the pod as read.
    let mut expected = PodPatch::new("a", "v8");
    expected.clear_report = true;
    expected.if_unchanged = Some("41".into());
    assert_eq!(retry.patches, vec![expected]);

    // The patch applied: `a` is asked for v8 and has no report yet. The retry waits for its
    // watcher; it is not rejected again, and nothing is announced again.
    let st1 = apply(&retry);
    let mut a = marked(pod("a", 10), "v8");
    a.serving = Some("v7".into());
    let pods = vec![a, pod("b", 20), pod("c", 30)];
    let d = decide(&input("v8", &st1, &pods));
    assert_eq!(d.rollout.phase, RolloutPhase::Canary, "{:?}", d.rollout);
    assert_eq!(d.rejected, None);
    assert!(d.alert.is_none() && d.notice.is_none() && d.outcome.is_none());
    assert!(d.patches.is_empty(), "{:?}", d.patches);
}

#[test]
fn reverting_a_pod_keeps_the_report_that_explains_why() {
    // `a` rolled v8 back and is still asked for v8: it is marked back to v7, and its report (on
    // v8, not on v7) stays, with the reason on the pod.
    let mut a = report(marked(pod("a", 10), "v8"), "v8", Some(Verdict::RolledBack));
    a.serving = Some("v7".into());
    let pods = vec![a, pod("b", 20), pod("c", 30)];
    let st = serving("v7");
    let d = decide(&input("v8", &st, &pods));
    assert_eq!(d.rejected.as_deref(), Some("v8"));
    assert_eq!(d.patches, vec![PodPatch::new("a", "v7")]);
}
