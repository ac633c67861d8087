//! OIP v2 over HTTP/REST (axum): health, metadata and inference with JSON tensors and Triton's
//! binary tensor extension (`Inference-Header-Content-Length`). Errors are `{"error": "..."}`
//! with 400/404/503 (+`Retry-After`)/504/500.
//!
//! A body is read only after the version it names is resolved, within `--max-message-bytes`
//! (a larger `Content-Length` is refused before a byte is read) and charged to the in-flight
//! budget as it arrives, together with its decoded tensors, until the answer is produced.

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

use super::{
    json::{decode_request, encode_response},
    panic::{CatchPanicLayer, http_panic_response},
};
use crate::{
    error::InferError,
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

/// The HTTP router of the OIP v2 endpoints.
pub fn router(server: Arc<Server>) -> Router {
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
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .with_state(server)
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
) -> Result<Bytes, InferError> {
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
        // Address space only: pages are touched (and charged) as the bytes arrive.
        capacity = n;
    }
    let mut buf = bytes::BytesMut::with_capacity(capacity);
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
    Ok(buf.freeze())
}

async fn infer(
    State(s): State<Arc<Server>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(s, model, None, headers, body).await
}

async fn infer_v(
    State(s): State<Arc<Server>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(s, model, Some(version), headers, body).await
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

async fn run(
    s: Arc<Server>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let charge = s.budget.charge();
    let result = async {
        let v = s.resolve(&model, version.as_deref())?;
        let header_len = header_length(&headers)?;
        let bytes = read_body(&s, &headers, &mut body, &charge).await?;
        let d = decode_request(
            &bytes,
            header_len,
            Expect {
                model: &model,
                inputs: &v.info.inputs,
                max_rows: v.max_batch(),
                max_bytes: s.limits.max_message_bytes,
            },
        )?;
        drop(bytes);
        charge.add(d.inputs.iter().map(|t| t.data.len()).sum())?;
        let out = s
            .infer(
                v,
                Request {
                    protocol: Protocol::Http,
                    id: d.id.as_deref(),
                    named_version: version.as_deref().is_some_and(|v| !v.is_empty()),
                    inputs: d.inputs,
                    requested: &d.requested,
                    timeout: d.timeout,
                    traceparent: trace_header(&s, &headers, TRACEPARENT),
                    tracestate: trace_header(&s, &headers, TRACESTATE),
                },
            )
            .await?;
        let encoded = encode_response(&model, &out.version, d.id.as_deref(), &out.outputs, |n| {
            d.all_binary || d.binary.iter().any(|b| b == n)
        })?;
        Ok::<_, InferError>(encoded)
    }
    .await;
    if result.is_err() {
        // Refused before its body was read (unknown model, too large, over the budget): the
        // rest is drained, not kept, so the client reads this answer.
        drain(&mut body, s.limits.max_message_bytes.saturating_mul(2)).await;
    }
    match result {
        Ok(encoded) => {
            s.count(Protocol::Http, Ok(()));
            match encoded.header_len {
                None => {
                    ([(header::CONTENT_TYPE, "application/json")], encoded.body).into_response()
                }
                Some(len) => {
                    let mut resp = (
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        encoded.body,
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
