//! The Kubernetes objects the operator owns, built by pure functions: a [`Validated`]
//! InferenceService (or a ModelVersion) in, the objects it applies out. No I/O; every object is complete (apiVersion, kind, name, namespace,
//! labels, controller owner reference) so that it can be server-side applied as is, and building
//! twice gives equal objects, which is what makes a second reconcile a no-op.
//!
//! The pod contract (docs/architecture.md, "The pod contract") is implemented in
//! [`deployment`]; GPU and CPU pinning in [`scheduling`].

pub mod autoscaling;
pub mod decision_log;
pub mod deployment;
pub mod gpu;
pub mod job;
pub mod observability;
pub mod pod;
pub mod rbac;
pub mod scheduling;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kinfer_api::report::{INFERENCE_SERVICE_LABEL, MODEL_LABEL};

use crate::validate::Validated;

/// What the operator's flags decide for every InferenceService: images, pull policy, where
/// pods send spans by default, and whether KEDA scales on Prometheus queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Runtime image when the spec names none.
    pub runtime_image: String,
    /// Runtime image of a service with GPUs when the spec names none.
    pub runtime_gpu_image: String,
    /// Watcher image (sidecar and verification Job).
    pub watcher_image: String,
    /// `imagePullPolicy` of every container.
    pub image_pull_policy: String,
    /// The collector of pods whose `spec.tracing` names none (`--pod-otlp-endpoint`).
    pub pod_otlp_endpoint: Option<String>,
    /// The Prometheus KEDA's ScaledObjects query (`--keda-prometheus-address`).
    pub keda_prometheus: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            runtime_image: "kinfer.local/kinfer-runtime:0.1.0".into(),
            runtime_gpu_image: "kinfer.local/kinfer-runtime-gpu:0.1.0".into(),
            watcher_image: "kinfer.local/kinfer-watcher:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            pod_otlp_endpoint: None,
            keda_prometheus: None,
        }
    }
}

/// Every object one InferenceService owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// Runtime + watcher pods.
    pub deployment: Deployment,
    /// HTTP, gRPC and metrics ports.
    pub service: Service,
    /// At most one pod voluntarily disrupted at a time.
    pub pdb: PodDisruptionBudget,
    /// The watcher's identity.
    pub service_account: ServiceAccount,
    /// What the watcher may do (the pod contract's RBAC).
    pub role: Role,
    /// Binds `role` to `service_account`.
    pub role_binding: RoleBinding,
    /// What scales the Deployment when `spec.autoscaling` is set.
    pub scaler: autoscaling::Scaler,
    /// `<name>-policy` with `policy.yaml`, present when `spec.policy` is set.
    pub policy: Option<ConfigMap>,
}

/// Builds every owned object; `readable` is what the watcher's Role may read (see
/// [`rbac::Readable`]).
pub fn build(v: &Validated, d: &Defaults, readable: &rbac::Readable) -> Objects {
    Objects {
        deployment: deployment::deployment(v, d),
        service: service::service(v),
        pdb: service::pdb(v),
        service_account: rbac::service_account(v),
        role: rbac::role(v, readable),
        role_binding: rbac::role_binding(v),
        scaler: autoscaling::scaler(v, d),
        policy: deployment::policy_config_map(v),
    }
}

/// The labels of every object of an InferenceService (the pod contract's labels).
pub fn labels(name: &str, model: Option<&str>) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/instance".into(), name.into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::FIELD_MANAGER.into(),
    );
    if let Some(m) = model {
        l.insert(MODEL_LABEL.into(), m.into());
    }
    l
}

/// The pod selector of an InferenceService (a subset of [`labels`]; immutable once created).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "kinfer".into()),
        (INFERENCE_SERVICE_LABEL.into(), name.into()),
    ])
}

/// The selector as a label-selector string (`status.selector`, list calls).
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the watcher's ServiceAccount, Role and RoleBinding.
pub fn watcher_name(isvc: &str) -> String {
    format!("{isvc}-watcher")
}

/// Name of the policy ConfigMap.
pub fn policy_name(isvc: &str) -> String {
    format!("{isvc}-policy")
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference.
pub(crate) fn meta(v: &Validated, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(&v.name, v.model.as_deref())),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::validate::{tests::isvc, validate};

    /// A validated spec from JSON, with model `fraud`.
    pub fn validated(spec_json: &str) -> Validated {
        validate(&isvc("fraud", spec_json), Some("fraud".into())).expect("valid")
    }

    #[test]
    fn every_object_is_owned_and_labelled() {
        let o = build(
            &validated(r#"{"modelVersion":"fraud-v7","replicas":3}"#),
            &Defaults::default(),
            &Default::default(),
        );
        let metas = [
            &o.deployment.metadata,
            &o.service.metadata,
            &o.pdb.metadata,
            &o.service_account.metadata,
            &o.role.metadata,
            &o.role_binding.metadata,
        ];
        for m in metas {
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l["kinfer.dev/inferenceservice"], "fraud");
            assert_eq!(l["app.kubernetes.io/managed-by"], "kinfer-operator");
            assert_eq!(l["kinfer.dev/model"], "fraud");
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (o.kind.as_str(), o.controller),
                ("InferenceService", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("ml"));
        }
        assert!(o.scaler == autoscaling::Scaler::None && o.policy.is_none());
    }

    #[test]
    fn building_twice_is_equal() {
        let v = validated(r#"{"modelVersion":"fraud-v7","replicas":3}"#);
        assert_eq!(
            build(&v, &Defaults::default(), &Default::default()),
            build(&v, &Defaults::default(), &Default::default())
        );
        assert_eq!(
            selector_string("fraud"),
            "app.kubernetes.io/name=kinfer,kinfer.dev/inferenceservice=fraud"
        );
    }
}
