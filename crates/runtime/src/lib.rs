//! kinfer-runtime: the data plane. An Open Inference Protocol v2 server (HTTP/REST and gRPC) on
//! ONNX Runtime with dynamic batching, per-version statistics, and hot swap driven through an
//! admin API on a Unix socket.
//!
//! Data flows one way through the modules: [`protocol`] (wire formats) → [`server`] (what a
//! request means: limits, deadlines, policy, statistics) → [`models`] (versions, registry,
//! sessions) → [`batching`] (queues and workers) → [`tensor`] and [`error`] (pure types).
//! [`admin`], [`golden`] and [`metrics`] sit beside the protocols.

pub mod admin;
pub mod batching;
pub mod config;
pub mod decision_log;
pub mod error;
pub mod golden;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod pinning;
pub mod policy;
pub mod protocol;
pub mod server;
pub mod tensor;
