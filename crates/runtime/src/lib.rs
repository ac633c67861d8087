//! kinfer-runtime: the data plane. An Open Inference Protocol v2 server (HTTP/REST and gRPC) on
//! ONNX Runtime with dynamic batching, per-version statistics, and hot swap driven through an
//! admin API on a Unix socket.

pub mod admin;
pub mod config;
pub mod golden;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod protocol;
