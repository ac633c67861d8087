//! The Open Inference Protocol v2: tensors, errors, the shared inference path, HTTP/REST and gRPC.

pub mod error;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod tensor;

/// Generated from `proto/grpc_predict_v2.proto`.
#[allow(missing_docs, clippy::all)] // generated code
pub mod pb {
    tonic::include_proto!("inference");
}
