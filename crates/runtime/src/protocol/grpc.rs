//! OIP v2 over gRPC (`inference.GRPCInferenceService`, tonic): health, metadata and ModelInfer
//! with `raw_input_contents` / `raw_output_contents` (and typed `contents` on input). The
//! client's deadline (`grpc-timeout`) and Triton's `timeout` parameter (microseconds) bound the
//! request's deadline.
//!
//! Messages are limited to `--max-message-bytes` and metered by [`super::metered`] before tonic
//! decodes them; each input's shape is checked against the model before typed `contents` are
//! converted, and raw contents are moved, not copied.

use std::{sync::Arc, time::Duration};

use kinfer_contract::telemetry::{TRACEPARENT, TRACESTATE};
use tonic::{Request, Response, Status};

use super::{
    metered::charge_of,
    pb::{
        self, grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    },
};
use crate::{
    error::InferError,
    server::{self, Protocol, Server},
    tensor::{
        DataType, Expect, Tensor, TensorSpec, add_tensor_bytes, check_shape, decoded_bytes,
        push_bytes_element,
    },
};

impl From<InferError> for Status {
    fn from(e: InferError) -> Self {
        let code = match e {
            InferError::Invalid(_) => tonic::Code::InvalidArgument,
            InferError::NotFound(_) => tonic::Code::NotFound,
            InferError::Overloaded(_) => tonic::Code::ResourceExhausted,
            InferError::Unavailable(_) => tonic::Code::Unavailable,
            InferError::Deadline(_) => tonic::Code::DeadlineExceeded,
            InferError::Internal(_) => tonic::Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The gRPC service.
pub struct GrpcService {
    server: Arc<Server>,
}

impl GrpcService {
    /// Wraps the shared server state.
    pub fn new(
        server: Arc<Server>,
    ) -> pb::grpc_inference_service_server::GrpcInferenceServiceServer<Self> {
        // The metering layer refuses an oversize message first, with a message naming the flag;
        // tonic's own limit is the backstop. Answers are not limited: they are the model's.
        let max = server.limits.max_message_bytes;
        pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(Self { server })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n); any value is
/// safe (saturating), the server core clamps it.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn tensor_meta(specs: &[TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_oip().into(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// Typed `contents` to little-endian bytes; `n` is the element count the checked shape needs,
/// compared with what was sent before anything is allocated.
fn contents_bytes(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    n: usize,
    c: &pb::InferTensorContents,
) -> Result<Vec<u8>, InferError> {
    let wrong = |got: usize| {
        InferError::invalid(format!(
            "input '{name}': shape {shape:?} needs {n} elements but contents has {got} for {}",
            dtype.as_oip()
        ))
    };
    macro_rules! conv {
        ($field:ident, $t:ty) => {{
            if c.$field.len() != n {
                return Err(wrong(c.$field.len()));
            }
            let mut out = Vec::with_capacity(n.saturating_mul(std::mem::size_of::<$t>()));
            for (i, &v) in c.$field.iter().enumerate() {
                let x = <$t>::try_from(v).map_err(|_| {
                    InferError::invalid(format!(
                        "input '{name}': element {i} ({v}) is not a valid {}",
                        dtype.as_oip()
                    ))
                })?;
                out.extend_from_slice(&x.to_le_bytes());
            }
            out
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            if c.bool_contents.len() != n {
                return Err(wrong(c.bool_contents.len()));
            }
            c.bool_contents.iter().map(|&b| u8::from(b)).collect()
        }
        DataType::Uint8 => conv!(uint_contents, u8),
        DataType::Uint16 => conv!(uint_contents, u16),
        DataType::Uint32 => conv!(uint_contents, u32),
        DataType::Uint64 => conv!(uint64_contents, u64),
        DataType::Int8 => conv!(int_contents, i8),
        DataType::Int16 => conv!(int_contents, i16),
        DataType::Int32 => conv!(int_contents, i32),
        DataType::Int64 => conv!(int64_contents, i64),
        DataType::Fp16 => {
            if c.fp32_contents.len() != n {
                return Err(wrong(c.fp32_contents.len()));
            }
            c.fp32_contents
                .iter()
                .flat_map(|&f| half::f16::from_f32(f).to_le_bytes())
                .collect()
        }
        DataType::Fp32 => {
            if c.fp32_contents.len() != n {
                return Err(wrong(c.fp32_contents.len()));
            }
            c.fp32_contents
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect()
        }
        DataType::Fp64 => {
            if c.fp64_contents.len() != n {
                return Err(wrong(c.fp64_contents.len()));
            }
            c.fp64_contents
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect()
        }
        DataType::Bytes => {
            if c.bytes_contents.len() != n {
                return Err(wrong(c.bytes_contents.len()));
            }
            let mut out = Vec::new();
            for (i, b) in c.bytes_contents.iter().enumerate() {
                push_bytes_element(&mut out, b).map_err(|e| {
                    InferError::invalid(format!("input '{name}': element {i}: {e}"))
                })?;
            }
            out
        }
    })
}

/// Decodes a ModelInferRequest's inputs: each input's datatype and shape are checked against
/// the model (and the message limit) before its data is taken; raw contents are moved out of
/// the request, typed contents converted.
pub fn decode_inputs(
    req: &mut pb::ModelInferRequest,
    expect: Expect<'_>,
) -> Result<Vec<Tensor>, InferError> {
    if req.inputs.is_empty() {
        return Err(InferError::invalid("request has no inputs"));
    }
    let raw = std::mem::take(&mut req.raw_input_contents);
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(InferError::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut total = 0usize;
    req.inputs
        .iter()
        .map(|i| {
            let dtype = DataType::from_oip(&i.datatype).ok_or_else(|| {
                InferError::invalid(format!(
                    "input '{}': unknown datatype '{}'",
                    i.name, i.datatype
                ))
            })?;
            let spec = expect.spec(&i.name)?;
            let count = check_shape(spec, dtype, &i.shape, expect.max_rows)?;
            total = add_tensor_bytes(
                total,
                &i.name,
                decoded_bytes(dtype, count),
                expect.max_bytes,
            )?;
            let data = match raw.next() {
                Some(bytes) => bytes,
                None => match &i.contents {
                    Some(c) => contents_bytes(&i.name, dtype, &i.shape, count, c)?,
                    None => {
                        return Err(InferError::invalid(format!(
                            "input '{}' has neither contents nor raw_input_contents",
                            i.name
                        )));
                    }
                },
            };
            Ok(Tensor {
                name: i.name.clone(),
                dtype,
                shape: i.shape.clone(),
                data,
            })
        })
        .collect()
}

/// Triton's `timeout` request parameter: microseconds, a non-negative integer.
fn timeout_param(req: &pb::ModelInferRequest) -> Result<Option<Duration>, InferError> {
    let Some(p) = req.parameters.get("timeout") else {
        return Ok(None);
    };
    let us = match p.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => u64::try_from(n).ok(),
        Some(ParameterChoice::Uint64Param(n)) => Some(n),
        _ => None,
    };
    us.map(|us| Some(Duration::from_micros(us))).ok_or_else(|| {
        InferError::invalid("parameter 'timeout' must be a non-negative integer (microseconds)")
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.server.registry.ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = self
            .server
            .registry
            .resolve(&r.name, Some(&r.version))
            .is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "kinfer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository/versions".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let v = self.server.registry.resolve(&r.name, Some(&r.version))?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: self.server.registry.name.clone(),
            versions: self
                .server
                .registry
                .all()
                .iter()
                .map(|v| v.info.version.clone())
                .collect(),
            platform: "onnxruntime_onnx".into(),
            inputs: tensor_meta(&v.info.inputs),
            outputs: tensor_meta(&v.info.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(&req);
        let charge = charge_of(req.extensions());
        let (metadata, _, mut r) = req.into_parts();
        let s = &self.server;
        // Read only when spans are exported: the header is free otherwise.
        let header = |name| {
            s.traced
                .then(|| metadata.get(name)?.to_str().ok())
                .flatten()
        };
        let result = async {
            let v = s.resolve(&r.model_name, Some(&r.model_version))?;
            let mut inputs = decode_inputs(
                &mut r,
                Expect {
                    model: &v.info.name,
                    inputs: &v.info.inputs,
                    max_rows: v.max_batch(),
                    max_bytes: s.limits.max_message_bytes,
                },
            )?;
            if let Some(c) = &charge {
                // Raw contents were moved (already charged as received); typed ones were converted.
                let converted: usize = r
                    .inputs
                    .iter()
                    .zip(&inputs)
                    .filter(|(i, _)| i.contents.is_some())
                    .map(|(_, t)| t.data.len())
                    .sum();
                c.add(converted)?;
            }
            let param = timeout_param(&r)?;
            let timeout = match (deadline, param) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let requested: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
            let request = server::Request {
                protocol: Protocol::Grpc,
                id: Some(r.id.as_str()).filter(|i| !i.is_empty()),
                named_version: !r.model_version.is_empty(),
                inputs: &mut inputs,
                requested: &requested,
                timeout,
                traceparent: header(TRACEPARENT),
                tracestate: header(TRACESTATE),
            };
            // The message is built while the outputs are where the run left them (prost's
            // message owns its bytes: one copy per output, into the message).
            s.infer(v, request, |a| {
                let outputs = a
                    .outputs
                    .iter()
                    .map(|t| pb::model_infer_response::InferOutputTensor {
                        name: t.name.to_owned(),
                        datatype: t.dtype.as_oip().into(),
                        shape: t.shape.to_vec(),
                        parameters: Default::default(),
                        contents: None,
                    })
                    .collect();
                let raw = a.outputs.iter().map(|t| t.data.to_vec()).collect();
                Ok((a.version.to_owned(), outputs, raw))
            })
            .await
        }
        .await;
        s.count(Protocol::Grpc, result.as_ref().map(|_| ()));
        let (version, outputs, raw_output_contents) = result?;
        Ok(Response::new(pb::ModelInferResponse {
            model_name: r.model_name,
            model_version: version,
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents,
        }))
    }
}
