//! The contract between kinfer's processes, as types both sides serialise: what crosses the
//! runtime's admin socket between the model-watcher and the runtime ([`admin`]), the
//! verification Job's check results ([`check`]), the analysis report the watcher writes on its
//! pod for the operator ([`report`]), the pod's label, annotation, condition and environment
//! names ([`pod`]), the drift statistic both the runtime and the watcher compute ([`drift`]), the command lines the operator writes for the runtime and the checks
//! ([`flags`]), exit codes ([`exit`]), Event and condition reasons ([`reasons`]) and durations
//! as written in flags and manifests ([`duration`]), the one retry schedule
//! ([`backoff`]), and (feature `telemetry`) how every binary logs and exports spans, with the
//! W3C trace context a client sends (`telemetry`). A field renamed
//! on one side fails to compile on the other, and a field the producer stops sending fails to
//! parse instead of reading as zero.
//!
//! No Kubernetes dependency: the runtime links this crate and nothing of kube.

pub mod admin;
pub mod backoff;
pub mod check;
pub mod drift;
pub mod duration;
pub mod exit;
pub mod flags;
pub mod pod;
pub mod reasons;
pub mod report;
#[cfg(feature = "telemetry")]
pub mod telemetry;
