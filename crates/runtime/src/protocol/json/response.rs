//! The response: the JSON head serialised from the tensors' bytes, and the binary outputs after
//! it when Triton's binary extension asked for them.

use serde::{
    Serialize,
    ser::{SerializeSeq, Serializer},
};

use crate::{
    error::InferError,
    tensor::{DataType, Tensor, TensorView},
};

/// A tensor's elements as a JSON array.
pub(super) struct DataJson<'a>(pub(super) DataType, pub(super) &'a [u8]);

/// A float as JSON: a number, or the string Triton sends for NaN and the infinities.
fn float_json<S: Serializer>(seq: &mut S::SerializeSeq, x: f64) -> Result<(), S::Error> {
    if x.is_finite() {
        seq.serialize_element(&x)
    } else {
        seq.serialize_element(&x.to_string())
    }
}

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let DataJson(dtype, data) = *self;
        let mut seq = s.serialize_seq(None)?;
        macro_rules! nums {
            ($t:ty) => {
                for c in data.chunks_exact(std::mem::size_of::<$t>()) {
                    if let Ok(b) = c.try_into() {
                        seq.serialize_element(&<$t>::from_le_bytes(b))?;
                    }
                }
            };
        }
        match dtype {
            DataType::Bool => {
                for &b in data {
                    seq.serialize_element(&(b != 0))?;
                }
            }
            DataType::Uint8 => nums!(u8),
            DataType::Uint16 => nums!(u16),
            DataType::Uint32 => nums!(u32),
            DataType::Uint64 => nums!(u64),
            DataType::Int8 => nums!(i8),
            DataType::Int16 => nums!(i16),
            DataType::Int32 => nums!(i32),
            DataType::Int64 => nums!(i64),
            DataType::Fp16 => {
                for c in data.chunks_exact(2) {
                    if let Ok(b) = c.try_into() {
                        float_json::<S>(&mut seq, half::f16::from_le_bytes(b).to_f64())?;
                    }
                }
            }
            DataType::Fp32 => {
                for c in data.chunks_exact(4) {
                    if let Ok(b) = c.try_into() {
                        let x = f32::from_le_bytes(b);
                        if x.is_finite() {
                            seq.serialize_element(&x)?;
                        } else {
                            float_json::<S>(&mut seq, f64::from(x))?;
                        }
                    }
                }
            }
            DataType::Fp64 => {
                for c in data.chunks_exact(8) {
                    if let Ok(b) = c.try_into() {
                        float_json::<S>(&mut seq, f64::from_le_bytes(b))?;
                    }
                }
            }
            DataType::Bytes => {
                for item in crate::tensor::split_bytes(data) {
                    seq.serialize_element(&String::from_utf8_lossy(item))?;
                }
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct BinaryParam {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParam>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

/// The `outputs` array, serialised from the views as it is written (no list built first).
struct OutputsJson<'a, F> {
    outputs: &'a [TensorView<'a>],
    binary: &'a F,
}

impl<F: Fn(&str) -> bool> Serialize for OutputsJson<'_, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.outputs.len()))?;
        for t in self.outputs {
            let as_binary = (self.binary)(t.name);
            seq.serialize_element(&OutputJson {
                name: t.name,
                datatype: t.dtype.as_oip(),
                shape: t.shape,
                parameters: as_binary.then_some(BinaryParam {
                    binary_data_size: t.data.len(),
                }),
                data: (!as_binary).then_some(DataJson(t.dtype, t.data)),
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(bound = "F: Fn(&str) -> bool")]
struct ResponseHead<'a, F: Fn(&str) -> bool> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: &'a str,
    outputs: OutputsJson<'a, F>,
}

/// A response body: the JSON head and, when some outputs are binary, their bytes after it.
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// Length of the JSON part when binary outputs follow it
    /// (`Inference-Header-Content-Length`).
    pub header_len: Option<usize>,
}

/// Serialises a response; `binary(name)` says which outputs go as binary.
pub fn encode_response(
    model: &str,
    version: &str,
    id: Option<&str>,
    outputs: &[Tensor],
    binary: impl Fn(&str) -> bool,
) -> Result<EncodedResponse, InferError> {
    let views: Vec<TensorView<'_>> = outputs.iter().map(Tensor::view).collect();
    let mut body = Vec::with_capacity(256);
    let header_len = encode_response_into(model, version, id, &views, binary, &mut body)?;
    Ok(EncodedResponse { body, header_len })
}

/// Serialises a response into `body` (cleared first; its capacity is reused) straight from
/// the outputs where they are; returns the JSON part's length when binary outputs follow it.
pub fn encode_response_into(
    model: &str,
    version: &str,
    id: Option<&str>,
    outputs: &[TensorView<'_>],
    binary: impl Fn(&str) -> bool,
    body: &mut Vec<u8>,
) -> Result<Option<usize>, InferError> {
    body.clear();
    let head = ResponseHead {
        id,
        model_name: model,
        model_version: version,
        outputs: OutputsJson {
            outputs,
            binary: &binary,
        },
    };
    serde_json::to_writer(&mut *body, &head)
        .map_err(|e| InferError::Internal(format!("cannot encode the response: {e}")))?;
    let raw_len = outputs
        .iter()
        .filter(|t| binary(t.name))
        .fold(0usize, |n, t| n.saturating_add(t.data.len()));
    if raw_len == 0 {
        return Ok(None);
    }
    let header_len = body.len();
    body.reserve(raw_len);
    for t in outputs.iter().filter(|t| binary(t.name)) {
        body.extend_from_slice(t.data);
    }
    Ok(Some(header_len))
}
