//! The Open Inference Protocol v2 on the wire: HTTP/REST (JSON and Triton's binary extension)
//! and gRPC, their size metering and their last-resort panic guard. Protocols decode requests
//! into tensors, hand them to the server core (`crate::server`) and encode its answers; they
//! decide nothing about what a request means.
//!
//! Request bytes reach every line here, so nothing may panic on them: `unwrap`, `expect`,
//! `panic!` and indexing are refused by lint (the JSON codec also refuses `as` casts and
//! unchecked arithmetic).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod grpc;
pub mod http;
pub mod json;
pub mod metered;
pub mod panic;

/// Generated from `proto/grpc_predict_v2.proto`.
#[allow(missing_docs, clippy::all)] // generated code
pub mod pb {
    tonic::include_proto!("inference");
}
