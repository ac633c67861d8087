//! Compiles the Open Inference Protocol gRPC definition with a pure-Rust protobuf compiler
//! (protox), so building needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_predict_v2.proto");
    let fds = protox::compile(["proto/grpc_predict_v2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
