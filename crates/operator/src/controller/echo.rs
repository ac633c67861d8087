//! The owned-object watch events that only echo the operator's own writes. Each apply returns the
//! object's new `resourceVersion`, and the watch on that kind then delivers the same version
//! back; reconciling the owner again for it redoes what was just done (on a cold start of 1,000
//! InferenceServices, ~4 extra reconciles each, competing with the ones not yet reconciled at
//! all). So the operator remembers, per owned object, the version it last wrote, and the owned
//! objects' triggers skip an event of exactly that version. Any other version — someone else's
//! edit, a deletion (its event carries the deletion's version), a Deployment's status moving —
//! reaches the owner as before. An event that arrives before the apply's answer (often, on a busy
//! API server) waits for the answers of the owner's reconcile ([`Flight`]): an echo is then
//! dropped, anything else reconciles the owner again at once.
//!
//! An InferenceService's own status writes echo the same way: the trigger of the
//! InferenceService controller skips the status a write made ([`is_own_status_echo`]; the
//! event often arrives before the write's answer, so it is known by content as well as by
//! version) — on a cold start of 1,000 services those echoes queued a second
//! reconcile of each behind the first of the others. The other way round, a reconcile that starts
//! before the watch has delivered the status this operator just wrote reads a stale copy, and its
//! status write would be refused (a conflict) after all its other calls. Such a reconcile waits
//! instead ([`predates_own_status_write`]), and then the written version's arrival is not skipped:
//! it triggers the waiting reconcile.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use kinfer_api::{InferenceService, inference_service::InferenceServiceStatus};
use kube::{Resource, ResourceExt, runtime::reflector::ObjectRef};

/// The version last written per owned object, by the object's uid (one entry per object the
/// operator applied; an entry goes when another version of the object is seen).
static WRITTEN: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// Remembers `written`, as the API server returned it after the operator's write.
pub fn record<K: Resource>(written: &K) {
    let (Some(uid), Some(rv)) = (written.uid(), written.resource_version()) else {
        return;
    };
    if let Ok(mut w) = WRITTEN.lock() {
        w.insert(uid, rv);
    }
}

/// Whether `seen` (a watch event's object) is exactly the version the operator last wrote.
/// Seeing any other version forgets the written one.
pub fn is_echo<K: Resource>(seen: &K) -> bool {
    let (Ok(mut w), Some(k)) = (WRITTEN.lock(), seen.uid()) else {
        return false;
    };
    match (w.get(&k), seen.resource_version()) {
        (Some(written), Some(rv)) if *written == rv => true,
        (Some(_), _) => {
            w.remove(&k);
            false
        }
        (None, _) => false,
    }
}

/// How long a status write holds back reconciles of a copy older than it: past this the
/// reconcile goes ahead (and, if the copy is still stale, meets the conflict).
pub const STATUS_CATCH_UP: Duration = Duration::from_secs(5);

/// A status write the watch has not delivered yet.
struct StatusWrite {
    /// What the written object holds besides its status: the copy the write was conditioned on
    /// ([`read_facts`]).
    read: u64,
    /// The status written.
    status: InferenceServiceStatus,
    /// The version the write returned, once it answered.
    version: Option<String>,
    /// When it was made.
    at: Instant,
    /// Whether a reconcile read an older copy since and waits for this version.
    awaited: bool,
    /// Whether the watch delivered the write before the write's answer arrived.
    seen: bool,
}

/// Per InferenceService uid, its last status write not yet seen on the watch.
static STATUS_WRITTEN: LazyLock<Mutex<HashMap<String, StatusWrite>>> =
    LazyLock::new(Default::default);

/// What a service's reconcile reads of the object itself, besides its status: generation (the
/// spec), labels, annotations, deletion.
fn read_facts(isvc: &InferenceService) -> u64 {
    let m = isvc.meta();
    let mut h = DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Before a status write of `next` on `read` (conditioned on `read`'s version, so the written
/// object is `read` with that status): remembers what the write's watch event will hold. The
/// event may arrive before the write's answer.
pub fn intend_status(read: &InferenceService, next: &InferenceServiceStatus) {
    let Some(uid) = read.uid() else { return };
    if let Ok(mut w) = STATUS_WRITTEN.lock() {
        w.insert(
            uid,
            StatusWrite {
                read: read_facts(read),
                status: next.clone(),
                version: None,
                at: Instant::now(),
                awaited: false,
                seen: false,
            },
        );
    }
}

/// After the status write of [`intend_status`] answered with `written`.
pub fn record_status(written: &InferenceService) {
    let (Some(uid), Some(version)) = (written.uid(), written.resource_version()) else {
        return;
    };
    if let Ok(mut w) = STATUS_WRITTEN.lock() {
        match w.get_mut(&uid) {
            Some(s) if s.seen => {
                w.remove(&uid);
            }
            Some(s) => {
                s.version = Some(version);
                s.at = Instant::now();
            }
            None => {}
        }
    }
}

/// After a status write of [`intend_status`] that was refused or failed.
pub fn abandon_status(read: &InferenceService) {
    if let (Ok(mut w), Some(uid)) = (STATUS_WRITTEN.lock(), read.uid()) {
        w.remove(&uid);
    }
}

/// Whether `seen` (an InferenceService watch event) is this operator's last status write on it
/// — its version, or, before the write answered, the read copy's facts with the written status
/// — and no reconcile waits for it: its trigger is then skipped. The reconcile that wrote it
/// acted on exactly that object.
pub fn is_own_status_echo(seen: &InferenceService) -> bool {
    let (Ok(mut w), Some(uid)) = (STATUS_WRITTEN.lock(), seen.uid()) else {
        return false;
    };
    let Some(s) = w.get_mut(&uid) else {
        return false;
    };
    let same = match &s.version {
        Some(v) => seen.resource_version().as_ref() == Some(v),
        None => read_facts(seen) == s.read && seen.status.as_ref() == Some(&s.status),
    };
    if !same {
        return false;
    }
    let awaited = s.awaited;
    if s.version.is_some() {
        w.remove(&uid);
    } else {
        s.seen = true;
    }
    !awaited
}

/// Whether `read` (the copy a reconcile got) is older than the status this operator last wrote
/// on it, within [`STATUS_CATCH_UP`] of the write; the written version's arrival then triggers
/// the owner again. Reading the written version, a write the watch delivered already, or
/// running out of time forgets the write.
pub fn predates_own_status_write(read: &InferenceService) -> bool {
    let (Ok(mut w), Some(uid)) = (STATUS_WRITTEN.lock(), read.uid()) else {
        return false;
    };
    let Some(s) = w.get_mut(&uid) else {
        return false;
    };
    let waiting = !s.seen
        && s.version
            .as_ref()
            .is_some_and(|v| read.resource_version().as_ref() != Some(v))
        && s.at.elapsed() < STATUS_CATCH_UP;
    if waiting {
        s.awaited = true;
    } else {
        w.remove(&uid);
    }
    waiting
}

/// An owned object's uid and the version an event of it carried.
type Held = Vec<(String, String)>;

/// Per InferenceService uid whose reconcile is applying its owned objects: each owned-object
/// event that arrived meanwhile and was not known as an echo yet.
static IN_FLIGHT: LazyLock<Mutex<HashMap<String, Held>>> = LazyLock::new(Default::default);

/// A reconcile applying an InferenceService's owned objects. An apply's watch event often
/// arrives before the apply's answer, when it cannot be known as an echo yet; such events wait
/// here instead of triggering the owner again, and [`Flight::land`] tells, once every answer is
/// in, whether any of them was not the operator's own write. Dropped without landing (an error,
/// a retry), it forgets them: that reconcile is retried anyway.
#[must_use = "land it to learn whether someone else changed an owned object meanwhile"]
pub struct Flight {
    owner: Option<String>,
}

/// Starts the [`Flight`] of `owner`'s applies.
pub fn take_off(owner: &InferenceService) -> Flight {
    let owner = owner.uid();
    if let (Ok(mut f), Some(uid)) = (IN_FLIGHT.lock(), &owner) {
        f.insert(uid.clone(), Vec::new());
    }
    Flight { owner }
}

impl Flight {
    /// Ends the flight: whether an owned object changed meanwhile other than by the operator's
    /// own applies (the owner must then be reconciled again).
    pub fn land(mut self) -> bool {
        let held = match (IN_FLIGHT.lock(), self.owner.take()) {
            (Ok(mut f), Some(uid)) => f.remove(&uid).unwrap_or_default(),
            _ => return false,
        };
        let Ok(mut w) = WRITTEN.lock() else {
            return !held.is_empty();
        };
        let mut foreign = false;
        for (uid, rv) in held {
            if w.get(&uid) != Some(&rv) {
                // Someone else's version (or a deletion): as in [`is_echo`], forget ours.
                w.remove(&uid);
                foreign = true;
            }
        }
        foreign
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let (Ok(mut f), Some(uid)) = (IN_FLIGHT.lock(), self.owner.take()) {
            f.remove(&uid);
        }
    }
}

/// The owned-object trigger: the InferenceService that controls `obj`, unless the event only
/// echoes the operator's own write, or arrives while that owner's applies are in flight (then
/// [`Flight::land`] decides).
pub fn owner_unless_echo<K: Resource>(obj: K) -> Option<ObjectRef<InferenceService>> {
    if is_echo(&obj) {
        return None;
    }
    let ns = obj.namespace();
    let owner = obj
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    if let (Ok(mut f), Some(uid), Some(rv)) = (IN_FLIGHT.lock(), obj.uid(), obj.resource_version())
        && let Some(held) = f.get_mut(&owner.uid)
    {
        held.push((uid, rv));
        return None;
    }
    ObjectRef::<InferenceService>::from_owner_ref(ns.as_deref(), owner, ())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference,
    };

    use super::*;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some(format!("uid-{name}"));
        c.metadata.namespace = Some("ns".into());
        c.metadata.resource_version = Some(rv.into());
        c.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "kinfer.dev/v1alpha1".into(),
            kind: "InferenceService".into(),
            name: "svc".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        c
    }

    #[test]
    fn the_written_version_is_skipped_any_other_triggers_the_owner() {
        let owner = Some(ObjectRef::<InferenceService>::new("svc").within("ns"));
        // Never written by the operator: the owner is reconciled.
        assert_eq!(owner_unless_echo(cm("echo-a", "5")), owner);
        record(&cm("echo-a", "7"));
        assert_eq!(owner_unless_echo(cm("echo-a", "7")), None, "our own write");
        assert_eq!(owner_unless_echo(cm("echo-a", "7")), None, "a relist of it");
        // Someone else's version (or the deletion's) triggers, and the record is gone.
        assert_eq!(owner_unless_echo(cm("echo-a", "9")), owner);
        assert_eq!(owner_unless_echo(cm("echo-a", "7")), owner);
        // Per object: another name's record does not hide this one.
        record(&cm("echo-b", "3"));
        assert_eq!(owner_unless_echo(cm("echo-c", "3")), owner);
    }

    fn isvc(uid: &str, rv: &str, replicas: &str) -> InferenceService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kinfer.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "svc", "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "generation": 1, "annotations": {"a": "b"}},
            "spec": {"modelVersion": "m-v1"},
            "status": {"replicas": replicas.parse::<i32>().unwrap()}
        }))
        .unwrap()
    }

    fn status(replicas: i32) -> InferenceServiceStatus {
        InferenceServiceStatus {
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn a_copy_older_than_the_own_status_write_waits_for_it() {
        let svc = |rv: &str| isvc("uid-status-a", rv, "1");
        assert!(!predates_own_status_write(&svc("4")), "nothing written");
        intend_status(&svc("4"), &status(2));
        record_status(&svc("6"));
        assert!(
            predates_own_status_write(&svc("4")),
            "the store has not caught up"
        );
        assert!(!predates_own_status_write(&svc("6")), "the written version");
        assert!(!predates_own_status_write(&svc("4")), "forgotten once seen");
    }

    #[test]
    fn the_echo_of_a_status_write_triggers_only_a_reconcile_that_waits_for_it() {
        let svc = |rv: &str| isvc("uid-status-b", rv, "1");
        let written = |rv: &str| isvc("uid-status-b", rv, "2");
        assert!(!is_own_status_echo(&svc("4")), "nothing written");

        // The answer first, then the event.
        intend_status(&svc("4"), &status(2));
        record_status(&written("6"));
        assert!(!is_own_status_echo(&svc("5")), "an older version triggers");
        assert!(is_own_status_echo(&written("6")), "the written version");
        assert!(
            !is_own_status_echo(&written("6")),
            "a relist of it triggers"
        );
        assert!(
            !predates_own_status_write(&written("6")),
            "nothing to wait for"
        );

        // The event before the answer: known by its content.
        intend_status(&written("6"), &status(3));
        let mut other = isvc("uid-status-b", "8", "3");
        other.metadata.annotations = None;
        assert!(
            !is_own_status_echo(&other),
            "someone changed an annotation too"
        );
        assert!(is_own_status_echo(&isvc("uid-status-b", "8", "3")));
        record_status(&isvc("uid-status-b", "8", "3"));
        assert!(
            !predates_own_status_write(&written("6")),
            "the store had the write before its answer"
        );

        // A reconcile read an older copy and waits: the echo wakes it.
        intend_status(&written("8"), &status(4));
        record_status(&isvc("uid-status-b", "10", "4"));
        assert!(predates_own_status_write(&written("8")));
        assert!(
            !is_own_status_echo(&isvc("uid-status-b", "10", "4")),
            "awaited"
        );
        assert!(
            !predates_own_status_write(&written("8")),
            "forgotten once seen"
        );

        // A refused write leaves nothing behind.
        intend_status(&written("10"), &status(5));
        abandon_status(&written("10"));
        assert!(!is_own_status_echo(&isvc("uid-status-b", "12", "5")));
    }

    #[test]
    fn an_event_before_its_applys_answer_waits_for_the_reconcile_to_land() {
        let owner = isvc("uid-owner-f", "1", "1");
        let owned = |rv: &str| {
            let mut c = cm("flight-a", rv);
            c.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-owner-f".into();
            c
        };
        let trigger = Some(ObjectRef::<InferenceService>::new("svc").within("ns"));

        // The echo before the answer: held, then known as ours.
        let flight = take_off(&owner);
        assert_eq!(owner_unless_echo(owned("7")), None, "held");
        record(&owned("7"));
        assert!(!flight.land(), "only our own write");
        assert_eq!(owner_unless_echo(owned("7")), None, "a relist of our write");

        // Someone else's version meanwhile: the owner must go again.
        let flight = take_off(&owner);
        assert_eq!(owner_unless_echo(owned("9")), None, "held");
        record(&owned("8"));
        assert!(flight.land(), "someone else's version");
        assert_eq!(owner_unless_echo(owned("8")), trigger, "ours was forgotten");

        // Outside a flight, or after one was dropped, events trigger as before.
        drop(take_off(&owner));
        assert_eq!(owner_unless_echo(owned("10")), trigger);
    }

    #[test]
    fn an_object_without_a_controlling_inference_service_triggers_nothing() {
        let mut c = cm("echo-d", "1");
        c.metadata.owner_references = None;
        assert_eq!(owner_unless_echo(c), None);
    }
}
