//! Status conditions in the Kubernetes (kstatus) convention: a fixed set of types per resource,
//! `status` one of `True`/`False`/`Unknown`, a CamelCase `reason`, a human `message`, the
//! `observedGeneration` they describe, and a `lastTransitionTime` that moves only when `status`
//! changes. Besides each resource's own types, both resources carry the kpt/kstatus pair
//! `Reconciling` and `Stalled` ([`set_progress`]), which kstatus (Flux's health checks, kpt,
//! cli-utils) reads before anything else.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: the InferenceService serves its version with all replicas available.
pub const READY: &str = "Ready";
/// `Progressing`: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// `RolledBack`: the last rollout was undone automatically; the message has the figures.
pub const ROLLED_BACK: &str = "RolledBack";
/// `Reconciling` (kstatus): True while kinfer is still working towards the spec (verification,
/// a rollout, pods starting); kstatus reads the object as InProgress.
pub const RECONCILING: &str = "Reconciling";
/// `Stalled` (kstatus): True while kinfer holds and will not make progress without a change
/// from its user (a rollback or refusal held, an invalid spec, an unschedulable pod); kstatus
/// reads the object as Failed.
pub const STALLED: &str = "Stalled";
/// `AlertsConfigured`: every alert webhook that names a token Secret may send it (the Secret
/// exists, opted in with `kinfer.dev/webhook-token: "true"`, and has the key). Present only while
/// a webhook names a token Secret; False says which one is refused and why.
pub const ALERTS_CONFIGURED: &str = "AlertsConfigured";
/// `CpuPinned`: every pod of a `resources.cpuPinning` service runs its inference threads on
/// CPUs of its own (the kubelet gave it an exclusive cpuset). Present only with `cpuPinning`;
/// False (`SharedCpus`) names a pod on the node's shared CPU pool. It never holds a rollout.
pub const CPU_PINNED: &str = "CpuPinned";
/// `Verified`: a ModelVersion's signature and file digests hold.
pub const VERIFIED: &str = "Verified";
/// `Validated`: a ModelVersion's outputs match its golden set.
pub const VALIDATED: &str = "Validated";

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl Status {
    /// The string Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// Builds a condition observed at `now` for `generation`.
pub fn new(
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Inserts or replaces the condition of the same type. The previous `lastTransitionTime` is kept
/// when the status did not change, so a reconcile that only refreshes the message or generation
/// does not look like a transition. Returns whether anything changed.
pub fn upsert(conditions: &mut Vec<Condition>, mut next: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == next.type_) {
        Some(current) => {
            if current.status == next.status {
                next.last_transition_time = current.last_transition_time.clone();
            }
            let changed = *current != next;
            *current = next;
            changed
        }
        None => {
            conditions.push(next);
            true
        }
    }
}

/// Where the object stands for kstatus: still working towards the spec, stalled, or neither
/// (its `Ready` condition says the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// `Reconciling=True` with this reason (CamelCase) and message.
    Reconciling(String, String),
    /// `Stalled=True` with this reason and message.
    Stalled(String, String),
    /// Both False: nothing in flight, nothing held.
    Settled,
}

/// Writes `Reconciling` and `Stalled` for `progress`: at most one of them True, the other False
/// (kstatus takes the first True one in list order, so they never disagree). Returns whether
/// anything changed.
pub fn set_progress(
    conditions: &mut Vec<Condition>,
    progress: &Progress,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let (reconciling, stalled) = match progress {
        Progress::Reconciling(reason, msg) => (
            (Status::True, reason.as_str(), msg.clone()),
            (
                Status::False,
                "Reconciling",
                "kinfer is working towards the spec".to_owned(),
            ),
        ),
        Progress::Stalled(reason, msg) => (
            (
                Status::False,
                "Stalled",
                "kinfer holds until the spec or the retry annotation changes".to_owned(),
            ),
            (Status::True, reason.as_str(), msg.clone()),
        ),
        Progress::Settled => (
            (
                Status::False,
                "Reconciled",
                "the status describes the spec".to_owned(),
            ),
            (Status::False, "Reconciled", "nothing is held".to_owned()),
        ),
    };
    let mut changed = false;
    for (t, (st, reason, msg)) in [(RECONCILING, reconciling), (STALLED, stalled)] {
        changed |= upsert(conditions, new(t, st, reason, msg, generation, now.clone()));
    }
    changed
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = Vec::new();
        assert!(upsert(
            &mut cs,
            new(READY, Status::False, "Rolling", "0/3", Some(1), at(10))
        ));
        // Same status, new message: the transition time stays at 10.
        assert!(upsert(
            &mut cs,
            new(READY, Status::False, "Rolling", "1/3", Some(1), at(20))
        ));
        assert_eq!(cs[0].last_transition_time, at(10));
        assert_eq!(cs[0].message, "1/3");
        // Status flips: the transition time moves.
        assert!(upsert(
            &mut cs,
            new(READY, Status::True, "Serving", "3/3", Some(1), at(30))
        ));
        assert_eq!(cs[0].last_transition_time, at(30));
        assert!(is_true(&cs, READY));
    }

    #[test]
    fn identical_condition_is_not_a_change() {
        let mut cs = vec![new(
            VERIFIED,
            Status::True,
            "SignatureValid",
            "ok",
            Some(2),
            at(5),
        )];
        let again = new(
            VERIFIED,
            Status::True,
            "SignatureValid",
            "ok",
            Some(2),
            at(99),
        );
        assert!(!upsert(&mut cs, again));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, at(5));
    }

    #[test]
    fn progress_sets_at_most_one_of_reconciling_and_stalled() {
        let mut cs = Vec::new();
        let r = Progress::Reconciling("Canary".into(), "1/1 canary".into());
        assert!(set_progress(&mut cs, &r, Some(4), &at(1)));
        assert!(is_true(&cs, RECONCILING) && !is_true(&cs, STALLED));
        assert_eq!(find(&cs, RECONCILING).unwrap().reason, "Canary");
        assert!(
            !set_progress(&mut cs, &r, Some(4), &at(2)),
            "same progress, no change"
        );
        let s = Progress::Stalled("LatencyRegression".into(), "p99 2x".into());
        assert!(set_progress(&mut cs, &s, Some(4), &at(3)));
        assert!(!is_true(&cs, RECONCILING) && is_true(&cs, STALLED));
        assert_eq!(find(&cs, STALLED).unwrap().message, "p99 2x");
        assert_eq!(find(&cs, STALLED).unwrap().last_transition_time, at(3));
        set_progress(&mut cs, &Progress::Settled, Some(5), &at(4));
        assert!(!is_true(&cs, RECONCILING) && !is_true(&cs, STALLED));
        assert_eq!(cs.len(), 2);
    }

    #[test]
    fn keeps_other_types() {
        let mut cs = Vec::new();
        upsert(&mut cs, new(READY, Status::True, "A", "", None, at(1)));
        upsert(
            &mut cs,
            new(PROGRESSING, Status::False, "B", "", None, at(1)),
        );
        assert_eq!(cs.len(), 2);
        assert!(!is_true(&cs, PROGRESSING));
        assert!(find(&cs, ROLLED_BACK).is_none());
    }
}
