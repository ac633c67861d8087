//! The owned-object watch events that only echo the operator's own writes. Each apply returns the
//! object's new `resourceVersion`, and the watch on that kind then delivers the same version
//! back; reconciling the owner again for it redoes what was just done (on a cold start of 1,000
//! InferenceServices, ~4 extra reconciles each, competing with the ones not yet reconciled at
//! all). So the operator remembers, per owned object, the version it last wrote, and the owned
//! objects' triggers skip an event of exactly that version. Any other version — someone else's
//! edit, a deletion (its event carries the deletion's version), a Deployment's status moving —
//! reaches the owner as before. An echo that arrives before the apply's answer is not skipped: a
//! spare reconcile, as without this.
//!
//! The same holds for an InferenceService's own status writes, the other way round: a reconcile
//! that starts before the watch has delivered the status this operator just wrote reads a stale
//! copy, and its status write would be refused (a conflict) after all its other calls. Such a
//! reconcile waits instead ([`predates_own_status_write`]); the written version's arrival
//! triggers the next one.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use kinfer_api::InferenceService;
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

/// Per InferenceService uid, the version of its last status write and when it was made.
static STATUS_WRITTEN: LazyLock<Mutex<HashMap<String, (String, Instant)>>> =
    LazyLock::new(Default::default);

/// Remembers the version of `written` after the operator wrote its status.
pub fn record_status<K: Resource>(written: &K) {
    let (Some(uid), Some(rv)) = (written.uid(), written.resource_version()) else {
        return;
    };
    if let Ok(mut w) = STATUS_WRITTEN.lock() {
        w.insert(uid, (rv, Instant::now()));
    }
}

/// Whether `read` (the copy a reconcile got) is older than the status this operator last wrote
/// on it, within [`STATUS_CATCH_UP`] of the write. Reading the written version (or running out
/// of time) forgets the write.
pub fn predates_own_status_write<K: Resource>(read: &K) -> bool {
    let (Ok(mut w), Some(uid)) = (STATUS_WRITTEN.lock(), read.uid()) else {
        return false;
    };
    let waiting = match w.get(&uid) {
        Some((rv, at)) => {
            read.resource_version().as_ref() != Some(rv) && at.elapsed() < STATUS_CATCH_UP
        }
        None => return false,
    };
    if !waiting {
        w.remove(&uid);
    }
    waiting
}

/// The owned-object trigger: the InferenceService that controls `obj`, unless the event only
/// echoes the operator's own write.
pub fn owner_unless_echo<K: Resource>(obj: K) -> Option<ObjectRef<InferenceService>> {
    if is_echo(&obj) {
        return None;
    }
    let ns = obj.namespace();
    obj.owner_references()
        .iter()
        .filter(|o| o.controller == Some(true))
        .find_map(|o| ObjectRef::<InferenceService>::from_owner_ref(ns.as_deref(), o, ()))
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

    #[test]
    fn a_copy_older_than_the_own_status_write_waits_for_it() {
        let svc = |rv: &str| {
            let mut c = cm("status-a", rv);
            c.metadata.uid = Some("uid-status-a".into());
            c
        };
        assert!(!predates_own_status_write(&svc("4")), "nothing written");
        record_status(&svc("6"));
        assert!(
            predates_own_status_write(&svc("4")),
            "the store has not caught up"
        );
        assert!(!predates_own_status_write(&svc("6")), "the written version");
        assert!(!predates_own_status_write(&svc("4")), "forgotten once seen");
    }

    #[test]
    fn an_object_without_a_controlling_inference_service_triggers_nothing() {
        let mut c = cm("echo-d", "1");
        c.metadata.owner_references = None;
        assert_eq!(owner_unless_echo(c), None);
    }
}
