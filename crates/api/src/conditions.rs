//! Status conditions in the Kubernetes (kstatus) convention: a fixed set of types per resource,
//! `status` one of `True`/`False`/`Unknown`, a CamelCase `reason`, a human `message`, the
//! `observedGeneration` they describe, and a `lastTransitionTime` that moves only when `status`
//! changes. Argo CD and Flux read these without custom health scripts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: the InferenceService serves its version with all replicas available.
pub const READY: &str = "Ready";
/// `Progressing`: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// `RolledBack`: the last rollout was undone automatically; the message has the figures.
pub const ROLLED_BACK: &str = "RolledBack";
/// `AlertsConfigured`: every alert webhook that names a token Secret may send it (the Secret
/// exists, opted in with `kinfer.dev/webhook-token: "true"`, and has the key). Present only while
/// a webhook names a token Secret; False says which one is refused and why.
pub const ALERTS_CONFIGURED: &str = "AlertsConfigured";
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
