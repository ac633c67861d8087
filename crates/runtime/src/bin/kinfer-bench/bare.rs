//! `kinfer-bench bare`: the ceiling of the protocol layer. An OIP v2 server on the same HTTP
//! (axum, hyper) and gRPC (tonic) stacks as kinfer-runtime that decodes every request into typed
//! tensors with kinfer's own decoders (checked against the model's inputs) and answers a fixed
//! tensor encoded with kinfer's own encoders: everything a request costs but the model run and
//! the server core. Its throughput on a core, with the raw `session.run` loop's, bounds what any
//! server that parses and runs can do there ("parse + run").

use std::{net::SocketAddr, path::Path, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use crossbeam_queue::ArrayQueue;
use http_body_util::BodyExt;
use kinfer_runtime::{
    models::session::{SessionOptions, build_session, specs},
    protocol::{
        grpc::decode_inputs,
        json::{Decoded, decode_request_into, encode_response_into},
        pb::{self, grpc_inference_service_server::GrpcInferenceService},
    },
    tensor::{Expect, Tensor, TensorSpec, TensorView},
};
use smallvec::SmallVec;
use tonic::Status;

/// The model's inputs (what requests are checked against) and the fixed answer.
struct Bare {
    name: String,
    inputs: Vec<TensorSpec>,
    answer: Vec<Tensor>,
    /// Buffers reused across requests, as kinfer-runtime's front end does.
    scratch: ArrayQueue<Box<Buffers>>,
}

/// One request's body, decoded inputs and encoded answer.
#[derive(Default)]
struct Buffers {
    body: Vec<u8>,
    decoded: Decoded,
    out: Vec<u8>,
}

impl Bare {
    fn expect(&self) -> Expect<'_> {
        Expect {
            model: &self.name,
            inputs: &self.inputs,
            max_rows: Some(4096),
            max_bytes: 64 << 20,
        }
    }
}

/// Serves until killed: HTTP on `http`, gRPC on `grpc`.
pub async fn serve(
    model: &Path,
    name: String,
    http: SocketAddr,
    grpc: SocketAddr,
    opts: &SessionOptions,
) -> anyhow::Result<()> {
    let (session, _) = build_session(model, opts)?;
    let inputs = specs(model, "input", session.inputs())?;
    let outputs = specs(model, "output", session.outputs())?;
    drop(session);
    // One row of each output, zeros: the size of an unbatched answer.
    let answer = outputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| d.max(1)).collect();
            let n: i64 = shape.iter().product();
            Tensor {
                name: s.name.clone(),
                dtype: s.dtype,
                shape,
                data: vec![0; usize::try_from(n).unwrap_or(0) * s.dtype.size().unwrap_or(4)],
            }
        })
        .collect();
    let bare = Arc::new(Bare {
        name,
        inputs,
        answer,
        scratch: ArrayQueue::new(256),
    });
    let app = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .with_state(bare.clone());
    let http_listener = tokio::net::TcpListener::bind(http).await?;
    let grpc_listener = tokio::net::TcpListener::bind(grpc).await?;
    let http_task = tokio::spawn(axum::serve(http_listener, app).into_future());
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(BareGrpc(bare)),
            )
            .serve_with_incoming(incoming),
    );
    eprintln!("kinfer-bench bare: HTTP {http}, gRPC {grpc}");
    let (h, g) = tokio::join!(http_task, grpc_task);
    h??;
    g??;
    Ok(())
}

async fn infer(
    State(b): State<Arc<Bare>>,
    UrlPath(model): UrlPath<String>,
    _headers: HeaderMap,
    body: Body,
) -> Response {
    let mut s = b.scratch.pop().unwrap_or_default();
    let Buffers {
        body: buf,
        decoded,
        out,
    } = &mut *s;
    buf.clear();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    let result = decode_request_into(buf, None, b.expect(), decoded).and_then(|()| {
        let (_, asked) = decoded.split();
        let views: SmallVec<[TensorView<'_>; 4]> = b.answer.iter().map(Tensor::view).collect();
        encode_response_into(&model, "1", asked.id, &views, |_| false, out)
    });
    let resp = match result {
        Ok(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::copy_from_slice(out),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let _ = b.scratch.push(s);
    resp
}

struct BareGrpc(Arc<Bare>);

#[tonic::async_trait]
impl GrpcInferenceService for BareGrpc {
    async fn server_live(
        &self,
        _: tonic::Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: tonic::Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse {
            ready: true,
        }))
    }

    async fn model_ready(
        &self,
        _: tonic::Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: tonic::Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the bare server answers ModelInfer only",
        ))
    }

    async fn model_metadata(
        &self,
        _: tonic::Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the bare server answers ModelInfer only",
        ))
    }

    async fn model_infer(
        &self,
        req: tonic::Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let b = &self.0;
        let mut r = req.into_inner();
        let inputs = decode_inputs(&mut r, b.expect())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        drop(inputs);
        let outputs = b
            .answer
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name.clone(),
                datatype: t.dtype.as_oip().into(),
                shape: t.shape.clone(),
                parameters: Default::default(),
                contents: None,
            })
            .collect();
        Ok(tonic::Response::new(pb::ModelInferResponse {
            model_name: r.model_name,
            model_version: "1".into(),
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: b.answer.iter().map(|t| t.data.clone()).collect(),
        }))
    }
}
