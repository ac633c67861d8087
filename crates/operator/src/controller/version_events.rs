//! Which ModelVersion watch events reach the InferenceServices that use the version. A service's
//! reconcile reads of a ModelVersion only its uid, its spec (the model, the Secrets and
//! ConfigMaps its pods may read) and the state its `Verified` and `Validated` conditions give
//! ([`version_state`]); an event that changes none of them — the
//! ModelVersion controller's own progress conditions, its Job's results, a label — triggers
//! nothing. One ModelVersion used by 1,000 services would otherwise re-reconcile all of them for
//! each status write of its own controller. Deletions and the versions a (re)list delivers always
//! pass.

use std::{
    collections::HashMap,
    future::ready,
    hash::{DefaultHasher, Hash, Hasher},
};

use futures::{Stream, StreamExt};
use kinfer_api::ModelVersion;
use kube::{Resource, runtime::watcher};

use super::inference_service::version_state;

/// What of `mv` a service's reconcile depends on, as one number: equal numbers, the same
/// decision.
pub fn rollout_facts(mv: &ModelVersion) -> u64 {
    let meta = mv.meta();
    let mut h = DefaultHasher::new();
    meta.uid.hash(&mut h);
    meta.generation.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    version_state(Some(mv)).hash(&mut h);
    h.finish()
}

/// The ModelVersions of `events` whose [`rollout_facts`] changed since the last event of the
/// same object, every deletion, and every object a (re)list delivers.
pub fn relevant(
    events: impl Stream<Item = Result<watcher::Event<ModelVersion>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<ModelVersion, watcher::Error>> + Send {
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter_map(move |event| {
        let passed = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(mv)) => {
                let facts = rollout_facts(&mv);
                let key = mv.meta().uid.clone().unwrap_or_default();
                (seen.insert(key, facts) != Some(facts)).then_some(Ok(mv))
            }
            Ok(watcher::Event::InitApply(mv)) => {
                seen.insert(
                    mv.meta().uid.clone().unwrap_or_default(),
                    rollout_facts(&mv),
                );
                Some(Ok(mv))
            }
            Ok(watcher::Event::Delete(mv)) => {
                seen.remove(mv.meta().uid.as_deref().unwrap_or_default());
                Some(Ok(mv))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        ready(passed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, executor::block_on, stream};
    use kinfer_api::conditions::{self, VALIDATED, VERIFIED};

    fn mv(uid: &str, generation: i64, conds: &[(&str, &str)]) -> ModelVersion {
        let conditions: Vec<_> = conds
            .iter()
            .map(|(t, s)| {
                serde_json::json!({"type": t, "status": s, "reason": "R", "message": "",
                    "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "m", "namespace": "ns", "uid": uid, "generation": generation},
            "spec": {"model": "m", "version": "v1", "source": {"uri": "s3://b/m/"}},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn only_what_a_service_reads_changes_the_facts() {
        let base = mv("u1", 1, &[(VERIFIED, "True"), (VALIDATED, "False")]);
        let mut progress = mv(
            "u1",
            1,
            &[(VERIFIED, "True"), (VALIDATED, "False"), ("Ready", "False")],
        );
        progress.status.as_mut().unwrap().digest = Some("sha256:ab".into());
        assert_eq!(rollout_facts(&base), rollout_facts(&progress));
        for changed in [
            mv("u1", 1, &[(VERIFIED, "True"), (VALIDATED, "True")]),
            mv("u1", 2, &[(VERIFIED, "True"), (VALIDATED, "False")]),
            mv("u2", 1, &[(VERIFIED, "True"), (VALIDATED, "False")]),
        ] {
            assert_ne!(rollout_facts(&base), rollout_facts(&changed));
        }
    }

    #[test]
    fn a_change_the_services_cannot_see_is_dropped_deletions_and_lists_pass() {
        use watcher::Event::*;
        let v = |generation, validated| {
            mv(
                "u1",
                generation,
                &[(VERIFIED, "True"), (VALIDATED, validated)],
            )
        };
        let mut ready = v(1, "True");
        ready.status.as_mut().unwrap().digest = Some("sha256:ab".into());
        let events = vec![
            Init,
            InitApply(v(1, "False")),
            InitDone,
            Apply(v(1, "False")),    // the same facts as listed: dropped
            Apply(v(1, "True")),     // validated: passes
            Apply(ready),            // only the digest: dropped
            Apply(v(2, "True")),     // a spec change: passes
            Delete(v(2, "True")),    // always passes
            InitApply(v(2, "True")), // a relist: passes
        ];
        let out: Vec<(i64, String)> = block_on(
            relevant(stream::iter(events.into_iter().map(Ok)))
                .map(|r| {
                    let m = r.unwrap();
                    let validated =
                        conditions::find(&m.status.as_ref().unwrap().conditions, VALIDATED)
                            .unwrap()
                            .status
                            .clone();
                    (m.meta().generation.unwrap(), validated)
                })
                .collect(),
        );
        let want = [
            (1, "False"),
            (1, "True"),
            (2, "True"),
            (2, "True"),
            (2, "True"),
        ];
        assert_eq!(out, want.map(|(g, s)| (g, s.to_owned())));
    }
}
