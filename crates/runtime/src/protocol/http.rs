//! OIP v2 over HTTP/REST (axum): health, metadata and inference with JSON tensors and Triton's
//! binary tensor extension (`Inference-Header-Content-Length`). Errors are `{"error": "..."}`
//! with 400/404/503 (+`Retry-After`)/504/500.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    error::InferError,
    infer::{InferOutput, Protocol, Server},
    tensor::{DataType, Tensor, TensorSpec, decode_json_data, encode_json_data},
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
        "parameters": {"serving_version": v.info.version, "max_batch_size": v.max_batch().unwrap_or(0)},
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

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A decoded HTTP inference request.
#[derive(Debug)]
struct Decoded {
    id: Option<String>,
    inputs: Vec<Tensor>,
    requested: Vec<String>,
    /// Output names to return as binary; `all_binary` for every output.
    binary: Vec<String>,
    all_binary: bool,
    timeout: Option<Duration>,
}

fn param_bool(p: &Map<String, Value>, key: &str) -> bool {
    p.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Decodes a request body: JSON, or JSON header + binary tensors when `header_len` is given.
fn decode(body: &[u8], header_len: Option<usize>) -> Result<Decoded, InferError> {
    let (json_part, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(InferError::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => (&body[..n], &body[n..]),
        None => (body, &body[..0]),
    };
    let req: RequestJson = serde_json::from_slice(json_part)
        .map_err(|e| InferError::invalid(format!("malformed inference request JSON: {e}")))?;
    if req.inputs.is_empty() {
        return Err(InferError::invalid("request has no inputs"));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let dtype = DataType::from_oip(&i.datatype).ok_or_else(|| {
            InferError::invalid(format!(
                "input '{}': unknown datatype '{}'",
                i.name, i.datatype
            ))
        })?;
        let data = match (i.parameters.get("binary_data_size"), &i.data) {
            (Some(size), _) => {
                let size = size.as_u64().ok_or_else(|| {
                    InferError::invalid(format!(
                        "input '{}': binary_data_size must be a non-negative integer",
                        i.name
                    ))
                })? as usize;
                if size > binary.len() {
                    return Err(InferError::invalid(format!(
                        "input '{}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                        i.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                mine.to_vec()
            }
            (None, Some(d)) => decode_json_data(&i.name, dtype, &i.shape, d)?,
            (None, None) => {
                return Err(InferError::invalid(format!(
                    "input '{}' has neither data nor binary_data_size",
                    i.name
                )));
            }
        };
        inputs.push(Tensor {
            name: i.name,
            dtype,
            shape: i.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(InferError::invalid(format!(
            "{} binary bytes after the inputs are not claimed by any binary_data_size",
            binary.len()
        )));
    }
    let all_binary = param_bool(&req.parameters, "binary_data_output");
    let binary_outputs = req
        .outputs
        .iter()
        .filter(|o| param_bool(&o.parameters, "binary_data"))
        .map(|o| o.name.clone())
        .collect();
    // Triton's `timeout` request parameter is in microseconds.
    let timeout = match req.parameters.get("timeout") {
        None => None,
        Some(v) => Some(Duration::from_micros(v.as_u64().ok_or_else(|| {
            InferError::invalid("parameter 'timeout' must be a non-negative integer (microseconds)")
        })?)),
    };
    Ok(Decoded {
        id: req.id,
        inputs,
        requested: req.outputs.into_iter().map(|o| o.name).collect(),
        binary: binary_outputs,
        all_binary,
        timeout,
    })
}

fn encode(
    model: &str,
    id: Option<String>,
    out: InferOutput,
    binary: &[String],
    all_binary: bool,
) -> Response {
    let mut raw: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = out
        .outputs
        .iter()
        .map(|t| {
            if all_binary || binary.contains(&t.name) {
                raw.extend_from_slice(&t.data);
                json!({"name": t.name, "datatype": t.dtype.as_oip(), "shape": t.shape,
                       "parameters": {"binary_data_size": t.data.len()}})
            } else {
                json!({"name": t.name, "datatype": t.dtype.as_oip(), "shape": t.shape,
                       "data": encode_json_data(t.dtype, &t.data)})
            }
        })
        .collect();
    let mut head = json!({"model_name": model, "model_version": out.version, "outputs": outputs});
    if let Some(id) = id {
        head["id"] = Value::String(id);
    }
    let head = serde_json::to_vec(&head).expect("JSON value serialises");
    if raw.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], head).into_response();
    }
    let len = head.len();
    let mut body = head;
    body.extend_from_slice(&raw);
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    resp.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(len));
    resp
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

async fn run(
    s: Arc<Server>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let bytes: Bytes = axum::body::to_bytes(body, s.max_body).await.map_err(|_| {
            InferError::invalid(format!(
                "request body exceeds the limit of {} bytes (--max-body-bytes)",
                s.max_body
            ))
        })?;
        let header_len = match headers.get(HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        InferError::invalid(
                            "Inference-Header-Content-Length must be a non-negative integer",
                        )
                    })?,
            ),
        };
        let d = decode(&bytes, header_len)?;
        let out = s
            .infer(
                Protocol::Http,
                d.id.as_deref(),
                &model,
                version.as_deref(),
                d.inputs,
                &d.requested,
                d.timeout,
            )
            .await?;
        Ok::<_, InferError>((d.id, out, d.binary, d.all_binary))
    }
    .await;
    match result {
        Ok((id, out, binary, all_binary)) => {
            s.count(Protocol::Http, Ok(()));
            encode(&model, id, out, &binary, all_binary)
        }
        Err(e) => {
            s.count(Protocol::Http, Err(&e));
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_and_binary_inputs() {
        let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.0,2.0]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"timeout":5000}}"#;
        let d = decode(body, None).unwrap();
        assert_eq!(d.inputs[0].data.len(), 8);
        assert_eq!(d.binary, vec!["y".to_string()]);
        assert_eq!(d.timeout, Some(Duration::from_millis(5)));

        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let d = decode(&body, Some(head.len())).unwrap();
        assert_eq!(d.inputs[0].data, vec![1, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn refuses_lying_binary_headers() {
        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0]);
        let e = decode(&body, Some(head.len())).unwrap_err().to_string();
        assert!(e.contains("exceeds the 4 binary bytes"), "{e}");
        let e = decode(&body, Some(10_000)).unwrap_err().to_string();
        assert!(
            e.contains("Inference-Header-Content-Length is 10000"),
            "{e}"
        );
        let e = decode(b"{nope", None).unwrap_err().to_string();
        assert!(e.contains("malformed inference request JSON"), "{e}");
    }
}
