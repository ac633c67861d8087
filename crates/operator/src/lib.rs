//! `kinfer-operator`, the control plane, as a library so that its pure parts (object builders,
//! validation, the rollout state machine, alert payloads, status composition) are unit tested
//! without an API server and the binary in `main.rs` stays a thin edge.
//!
//! Reconciliation is a pipeline (see `shared/STYLE.md`): *read* the InferenceService, its
//! ModelVersions and Pods → [`validate`] (pure) → build the owned [`objects`] (pure) → *apply*
//! them with server-side apply under one field manager → decide the [`rollout`] step (pure) →
//! patch Pods, emit Events and [`alerts`] → write the [`status`] when it changed.

pub mod alerts;
pub mod config;
pub mod controller;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod owned;
pub mod quantity;
pub mod rollout;
pub mod status;
pub mod trust;
pub mod validate;

/// The one field manager every write of the operator uses (server-side apply and patches).
pub const FIELD_MANAGER: &str = "kinfer-operator";

/// Errors of a reconcile. Each maps to a `reason` label of `kinfer_reconcile_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be serialised (a bug: every built object is serialisable).
    #[error("cannot serialise {what}: {source}")]
    Serialize {
        /// Which object.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The resource has no namespace (kinfer's resources are namespaced; a bug or a bad watch).
    #[error("{0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// Short, bounded label for `kinfer_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) => format!("api_{}", s.code),
                _ => "api_transport".into(),
            },
            Error::Serialize { .. } => "serialize".into(),
            Error::NoNamespace(_) => "no_namespace".into(),
        }
    }

    /// Wraps a client error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}
