//! OIP v2 over gRPC (`inference.GRPCInferenceService`, tonic): health, metadata and ModelInfer
//! with `raw_input_contents` / `raw_output_contents` (and typed `contents` on input). The
//! client's deadline (`grpc-timeout`) becomes the request's deadline.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{
    error::InferError,
    infer::{Protocol, Server},
    pb::{self, grpc_inference_service_server::GrpcInferenceService},
    tensor::{DataType, Tensor, TensorSpec, element_count},
};

/// The gRPC service.
pub struct GrpcService {
    server: Arc<Server>,
}

impl GrpcService {
    /// Wraps the shared server state.
    pub fn new(
        server: Arc<Server>,
    ) -> pb::grpc_inference_service_server::GrpcInferenceServiceServer<Self> {
        pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(Self { server })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
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

/// Typed `contents` to little-endian bytes.
fn contents_bytes(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    c: &pb::InferTensorContents,
) -> Result<Vec<u8>, InferError> {
    let n = element_count(shape).ok_or_else(|| {
        InferError::invalid(format!("input '{name}': shape {shape:?} is invalid"))
    })?;
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
            let mut out = Vec::with_capacity(n * std::mem::size_of::<$t>());
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
            let mut out = Vec::new();
            for b in &c.bytes_contents {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            out
        }
    })
}

/// Decodes a ModelInferRequest's inputs.
fn decode_inputs(req: &mut pb::ModelInferRequest) -> Result<Vec<Tensor>, InferError> {
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
    req.inputs
        .iter()
        .map(|i| {
            let dtype = DataType::from_oip(&i.datatype).ok_or_else(|| {
                InferError::invalid(format!(
                    "input '{}': unknown datatype '{}'",
                    i.name, i.datatype
                ))
            })?;
            let data = match raw.next() {
                Some(bytes) => bytes.to_vec(),
                None => match &i.contents {
                    Some(c) => contents_bytes(&i.name, dtype, &i.shape, c)?,
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
        let timeout = grpc_timeout(&req);
        let mut r = req.into_inner();
        let s = &self.server;
        let result = async {
            let inputs = decode_inputs(&mut r)?;
            let requested: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
            s.infer(
                Protocol::Grpc,
                Some(r.id.as_str()).filter(|i| !i.is_empty()),
                &r.model_name,
                Some(&r.model_version),
                inputs,
                &requested,
                timeout,
            )
            .await
        }
        .await;
        s.count(Protocol::Grpc, result.as_ref().map(|_| ()));
        let out = result?;
        let outputs = out
            .outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name.clone(),
                datatype: t.dtype.as_oip().into(),
                shape: t.shape.clone(),
                parameters: Default::default(),
                contents: None,
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: r.model_name,
            model_version: out.version,
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: out.outputs.into_iter().map(|t| t.data).collect(),
        }))
    }
}
