//! OIP v2 over HTTP/REST (axum): health, metadata and inference with JSON tensors and Triton's
//! binary tensor extension (`Inference-Header-Content-Length`). Errors are `{"error": "..."}`
//! with 400/404/503 (+`Retry-After`)/504/500.
//!
//! A body is read only after the version it names is resolved, within `--max-message-bytes`
//! (a larger `Content-Length` is refused before a byte is read) and charged to the in-flight
//! budget as it arrives, together with its decoded tensors, until the answer is produced. The
//! body, its decoded inputs and the encoded answer live in buffers a request borrows from a pool
//! ([`Scratch`]) and gives back: a request like the ones before allocates nothing in the server
//! core ([`answer`]); the response body handed to hyper is the one copy at the edge.

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::BodyExt;
use kinfer_contract::telemetry::{TRACEPARENT, TRACESTATE};
use serde_json::{Value, json};

use crossbeam_queue::ArrayQueue;

use super::{
    json::{Decoded, decode_request_into, encode_response_into},
    panic::{CatchPanicLayer, http_panic_response},
};
use crate::{
    error::InferError,
    models::version::LoadedVersion,
    server::{Protocol, Request, Server, budget::Charge},
    tensor::{Expect, TensorSpec},
};

/// The header Triton's binary extension uses for the JSON part's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(json!({"error": self.to_string()}))).into_response();
        if matches!(self, InferError::Overloaded(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Buffers one HTTP inference reuses: the body, its decoded inputs and the encoded answer. A
/// request takes a set from the pool and gives it back, so in steady state (requests like the
/// ones before) the server core allocates nothing per request.
#[derive(Default)]
pub struct Scratch {
    body: Vec<u8>,
    decoded: Decoded,
    out: Vec<u8>,
}

/// Buffer sets kept for reuse; more requests in flight than this allocate their own.
const SCRATCH_POOL: usize = 256;
/// A buffer larger than this is not kept (one huge request must not pin its memory).
const SCRATCH_KEEP_BYTES: usize = 1 << 20;

/// The HTTP front end's state: the server and the pool of request buffers.
pub struct Http {
    /// The server core.
    pub server: Arc<Server>,
    scratch: ArrayQueue<Box<Scratch>>,
}

/// A [`Scratch`] on loan from the pool, given back on drop.
struct Loan<'a> {
    pool: &'a ArrayQueue<Box<Scratch>>,
    scratch: Option<Box<Scratch>>,
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take()
            && s.body.capacity() <= SCRATCH_KEEP_BYTES
            && s.out.capacity() <= SCRATCH_KEEP_BYTES
        {
            let _ = self.pool.push(s);
        }
    }
}

impl Scratch {
    /// The request body's buffer (filled by the front end, or by a test).
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// The last answer's body.
    pub fn answer(&self) -> &[u8] {
        &self.out
    }
}

impl Http {
    /// The front end of `server`.
    pub fn new(server: Arc<Server>) -> Self {
        Self {
            server,
            scratch: ArrayQueue::new(SCRATCH_POOL),
        }
    }

    fn loan(&self) -> Loan<'_> {
        Loan {
            pool: &self.scratch,
            scratch: Some(self.scratch.pop().unwrap_or_default()),
        }
    }
}

/// The HTTP router of the OIP v2 endpoints.
pub fn router(server: Arc<Server>) -> Router {
    let http = Arc::new(Http::new(server.clone()));
    let infer_routes = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .with_state(http);
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .with_state(server)
        .merge(infer_routes)
        .layer(CatchPanicLayer::new(http_panic_response))
}

async fn server_metadata() -> impl IntoResponse {
    axum::Json(json!({
        "name": "kinfer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository/versions"],
    }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(s): State<Arc<Server>>) -> StatusCode {
    if s.registry.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn spec_json(specs: &[TensorSpec]) -> Value {
    Value::Array(
        specs
            .iter()
            .map(|s| json!({"name": s.name, "datatype": s.dtype.as_oip(), "shape": s.shape}))
            .collect(),
    )
}

/// Model metadata as OIP defines it; shared with gRPC through the same fields.
fn metadata(s: &Server, model: &str, version: Option<&str>) -> Result<Value, InferError> {
    let v = s.registry.resolve(model, version)?;
    let versions: Vec<String> = s
        .registry
        .all()
        .iter()
        .map(|v| v.info.version.clone())
        .collect();
    Ok(json!({
        "name": s.registry.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": spec_json(&v.info.inputs),
        "outputs": spec_json(&v.info.outputs),
        "parameters": {
            "serving_version": v.info.version,
            "max_batch_size": v.max_batch().unwrap_or(0),
            "execution_provider": v.info.provider.as_str(),
        },
    }))
}

async fn model_metadata(State(s): State<Arc<Server>>, Path(model): Path<String>) -> Response {
    metadata(&s, &model, None).map(axum::Json).into_response()
}

async fn model_metadata_v(
    State(s): State<Arc<Server>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(&s, &model, Some(&version))
        .map(axum::Json)
        .into_response()
}

async fn model_ready(State(s): State<Arc<Server>>, Path(model): Path<String>) -> StatusCode {
    match s.registry.resolve(&model, None) {
        Ok(_) => StatusCode::OK,
        Err(e) => StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn model_ready_v(
    State(s): State<Arc<Server>>,
    Path((model, version)): Path<(String, String)>,
) -> StatusCode {
    match s.registry.resolve(&model, Some(&version)) {
        Ok(_) => StatusCode::OK,
        Err(e) => StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// How long a refused request's unread body is drained before the answer goes out, at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// A drain stops at the first pause this long (the client is not sending: nothing to wait for).
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards what is left of a refused request's body (at most `limit` bytes, for at
/// most [`DRAIN_TIME`]), so a client that sends its whole body before reading gets the answer
/// instead of a reset connection. Nothing read here is kept.
async fn drain(body: &mut Body, limit: usize) {
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    let mut seen = 0usize;
    while seen < limit {
        let next = (tokio::time::Instant::now() + DRAIN_IDLE).min(until);
        match tokio::time::timeout_at(next, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
            }
            _ => break,
        }
    }
}

/// Reads a request body within the message limit, charging its bytes to the in-flight budget
/// as they arrive (a slow sender holds only what it has sent). A `Content-Length` over the limit
/// is refused before a byte is read, and one larger than the budget has free at once.
async fn read_body(
    s: &Server,
    headers: &HeaderMap,
    body: &mut Body,
    charge: &Charge,
    buf: &mut Vec<u8>,
) -> Result<(), InferError> {
    let max = s.limits.max_message_bytes;
    let too_big = |n: String| {
        InferError::invalid(format!(
            "request body of {n} bytes exceeds the limit of {max} bytes (--max-message-bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut capacity = 0;
    if let Some(n) = declared {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| too_big(n.to_string()))?;
        s.budget.fits(n)?;
        capacity = n;
    }
    buf.clear();
    // Address space only: pages are touched (and charged) as the bytes arrive.
    buf.reserve(capacity);
    loop {
        let idle = s.limits.body_idle_timeout;
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(InferError::invalid(format!(
                    "the request body stalled: no data for {idle:?} after {} bytes (--body-idle-timeout)",
                    buf.len()
                )));
            }
        };
        let frame =
            frame.map_err(|e| InferError::invalid(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len().saturating_add(data.len());
        if len > max {
            return Err(too_big(format!("more than {len}")));
        }
        charge.add(data.len())?;
        buf.extend_from_slice(&data);
    }
    Ok(())
}

async fn infer(
    State(h): State<Arc<Http>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&h, &model, None, &headers, body).await
}

async fn infer_v(
    State(h): State<Arc<Http>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&h, &model, Some(&version), &headers, body).await
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, InferError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                InferError::invalid(
                    "Inference-Header-Content-Length must be a non-negative integer",
                )
            }),
    }
}

/// A W3C trace header of the request, read only when spans are exported.
fn trace_header<'h>(s: &Server, headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    if !s.traced {
        return None;
    }
    headers.get(name)?.to_str().ok()
}

/// Answers one inference request whose body is in `scratch` with the answer's body in
/// `scratch.out` (and the JSON head's length when binary outputs follow it): the server core of
/// the HTTP front end, from the read body to the encoded answer, in `scratch`'s reused buffers.
#[allow(clippy::too_many_arguments)] // a request's parts, as the handler has them
pub async fn answer(
    s: &Server,
    v: Arc<LoadedVersion>,
    model: &str,
    named_version: bool,
    header_len: Option<usize>,
    trace: (Option<&str>, Option<&str>),
    scratch: &mut Scratch,
    charge: &Charge,
) -> Result<Option<usize>, InferError> {
    let Scratch { body, decoded, out } = scratch;
    decode_request_into(
        body,
        header_len,
        Expect {
            model,
            inputs: &v.info.inputs,
            max_rows: v.max_batch(),
            max_bytes: s.limits.max_message_bytes,
        },
        decoded,
    )?;
    let (inputs, asked) = decoded.split();
    charge.add(inputs.iter().map(|t| t.data.len()).sum())?;
    let request = Request {
        protocol: Protocol::Http,
        id: asked.id,
        named_version,
        inputs,
        requested: asked.requested(),
        timeout: asked.timeout,
        traceparent: trace.0,
        tracestate: trace.1,
    };
    s.infer(v, request, |a| {
        encode_response_into(
            model,
            a.version,
            asked.id,
            a.outputs,
            |n| asked.binary(n),
            out,
        )
    })
    .await
}

async fn run(
    h: &Http,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    mut body: Body,
) -> Response {
    let s = &*h.server;
    let charge = s.budget.charge();
    let mut loan = h.loan();
    let scratch = loan.scratch.get_or_insert_with(Box::default);
    let result = async {
        let v = s.resolve(model, version)?;
        let header_len = header_length(headers)?;
        read_body(s, headers, &mut body, &charge, &mut scratch.body).await?;
        let trace = (
            trace_header(s, headers, TRACEPARENT),
            trace_header(s, headers, TRACESTATE),
        );
        let named = version.is_some_and(|v| !v.is_empty());
        answer(s, v, model, named, header_len, trace, scratch, &charge).await
    }
    .await;
    if result.is_err() {
        // Refused before its body was read (unknown model, too large, over the budget): the
        // rest is drained, not kept, so the client reads this answer.
        drain(&mut body, s.limits.max_message_bytes.saturating_mul(2)).await;
    }
    match result {
        Ok(header_len) => {
            s.count(Protocol::Http, Ok(()));
            // The one copy at the edge: hyper takes an owned body; the buffer stays for reuse.
            let encoded = Bytes::copy_from_slice(&scratch.out);
            match header_len {
                None => ([(header::CONTENT_TYPE, "application/json")], encoded).into_response(),
                Some(len) => {
                    let mut resp = (
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        encoded,
                    )
                        .into_response();
                    resp.headers_mut()
                        .insert(HEADER_LENGTH, HeaderValue::from(len));
                    resp
                }
            }
        }
        Err(e) => {
            s.count(Protocol::Http, Err(&e));
            e.into_response()
        }
    }
}
