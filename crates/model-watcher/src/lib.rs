//! The kinfer model-watcher library, used by the `kinfer-watcher` sidecar binary.
//!
//! [`fetch`] downloads artifacts atomically from any S3-compatible store; [`signature`]
//! verifies OpenSSF model-signing bundles; [`admin`] talks to the runtime's admin socket;
//! [`paired`] holds the pure verdict math of an analysis against a paired baseline (confidence
//! intervals on latency, errors and decisions) and [`analysis`] that of the before/after
//! comparison (p99 ratio and budget, error rate, PSI drift);
//! [`rollout`] brings one version in step by step (one trace per version, a span per step);
//! [`report`] publishes annotations, the `ModelReady` condition and Events; [`metrics`] counts
//! verdicts, step durations and downloads for `/metrics`; [`cluster`] resolves the pod's target
//! and runs the loop.

pub mod admin;
pub mod analysis;
pub mod cluster;
pub mod fetch;
pub mod metrics;
pub mod paired;
pub mod report;
pub mod rollout;
pub mod signature;
