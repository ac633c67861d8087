//! Which observed pods are the operator's own. Labels can be copied by anyone who may create a
//! pod in the namespace, so a rollout verdict or a verification result is read only from a pod
//! whose controller chain leads to the object the operator made: a serving pod controlled by a
//! ReplicaSet that the service's Deployment controls, carrying that ReplicaSet's
//! `pod-template-hash` and running its template's containers; a verification pod controlled by
//! the ModelVersion's Job. Everything else is ignored, however it is labelled. Pure functions.

use k8s_openapi::{
    Metadata,
    api::{apps::v1::ReplicaSet, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The label a Deployment's ReplicaSets and their pods carry (the template's hash).
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The uid of `meta`'s controller when it is of `kind`.
fn controller_uid<'a>(meta: &'a ObjectMeta, kind: &str) -> Option<&'a str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

fn hash(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH))
        .map(String::as_str)
}

/// (name, image) of each container, in order.
fn containers(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Vec<(&str, Option<&str>)> {
    spec.map(|s| {
        s.containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_deref()))
            .collect()
    })
    .unwrap_or_default()
}

/// Whether `pod` is one of `rs`'s own: controlled by it, with its template hash and containers.
fn made_by(pod: &Pod, rs: &ReplicaSet) -> bool {
    let Some(rs_uid) = rs.metadata.uid.as_deref() else {
        return false;
    };
    let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
    controller_uid(pod.metadata(), "ReplicaSet") == Some(rs_uid)
        && hash(pod.metadata()).is_some()
        && hash(pod.metadata()) == hash(&rs.metadata)
        && containers(pod.spec.as_ref()) == containers(template.and_then(|t| t.spec.as_ref()))
}

/// The pods of `pods` that the Deployment with `deployment_uid` made (through one of
/// `replica_sets`); a look-alike is left out.
pub fn serving_pods<'a>(
    pods: &'a [Pod],
    replica_sets: &[ReplicaSet],
    deployment_uid: &str,
) -> Vec<&'a Pod> {
    let ours: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| controller_uid(&rs.metadata, "Deployment") == Some(deployment_uid))
        .collect();
    pods.iter()
        .filter(|p| ours.iter().any(|rs| made_by(p, rs)))
        .collect()
}

/// The pods of `pods` that the Job with `job_uid` controls.
pub fn job_pods<'a>(pods: &'a [Pod], job_uid: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| controller_uid(p.metadata(), "Job") == Some(job_uid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(uid: &str, owner: &str, hash: &str, image: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("fraud-{hash}"), "uid": uid, "labels": {"pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud",
                                              "uid": owner, "controller": true}]},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "runtime", "image": image}]}}}
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: Option<&str>, hash: &str, image: &str) -> Pod {
        let refs = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "fraud-rs",
                                          "uid": uid, "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"pod-template-hash": hash, "kinfer.dev/inferenceservice": "fraud"},
                         "ownerReferences": refs.unwrap_or(json!([]))},
            "spec": {"containers": [{"name": "runtime", "image": image}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_pods_of_the_deployments_replica_sets_count() {
        let sets = [
            rs("rs-1", "dep-1", "aaa", "kinfer:1"),
            rs("rs-2", "dep-1", "bbb", "kinfer:2"), // an older revision, still ours
            rs("rs-x", "dep-other", "ccc", "kinfer:1"),
        ];
        let pods = [
            pod("ours", Some("rs-1"), "aaa", "kinfer:1"),
            pod("older", Some("rs-2"), "bbb", "kinfer:2"),
            pod("no-owner", None, "aaa", "kinfer:1"),
            pod("foreign-rs", Some("rs-x"), "ccc", "kinfer:1"),
            pod("wrong-hash", Some("rs-1"), "bbb", "kinfer:1"),
            pod("other-image", Some("rs-1"), "aaa", "evil:1"),
        ];
        let names: Vec<_> = serving_pods(&pods, &sets, "dep-1")
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["ours", "older"]);
    }

    #[test]
    fn only_the_jobs_pods_count() {
        let mut mine = pod("job-pod", None, "x", "w");
        mine.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                                          "uid": "job-1", "controller": true}))
            .unwrap(),
        ]);
        let pods = [mine, pod("look-alike", None, "x", "w")];
        let names: Vec<_> = job_pods(&pods, "job-1")
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["job-pod"]);
    }
}
