//! The request head: everything but each input's `data` is read borrowed from the body, in
//! bounded lists; each input's shape is checked against the model before [`super::data`] parses
//! its data.

use std::{borrow::Cow, fmt, marker::PhantomData, time::Duration};

use serde::{
    Deserialize,
    de::{self, Deserializer, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use super::data::parse_data;
use crate::{
    error::InferError,
    tensor::{DataType, Expect, Tensor, add_tensor_bytes, check_shape, decoded_bytes},
};

/// Most inputs (and outputs) one request may name.
pub const MAX_TENSORS: usize = 256;
/// Most dimensions of a shape.
pub const MAX_RANK: usize = 32;
/// Deepest nesting of a `data` array.
pub const MAX_DEPTH: usize = 32;

/// What a bounded list holds, for its error message.
pub trait ListLimit {
    /// Most entries.
    const MAX: usize;
    /// What the entries are, e.g. "inputs".
    const WHAT: &'static str;
}

/// The `inputs` and `outputs` lists.
pub struct TensorsLimit;
impl ListLimit for TensorsLimit {
    const MAX: usize = MAX_TENSORS;
    const WHAT: &'static str = "tensors in 'inputs' or 'outputs'";
}

/// A `shape`.
pub struct RankLimit;
impl ListLimit for RankLimit {
    const MAX: usize = MAX_RANK;
    const WHAT: &'static str = "dimensions in a shape";
}

/// A JSON array of at most `L::MAX` entries.
pub struct Bounded<T, L>(pub Vec<T>, PhantomData<L>);

impl<T, L> Default for Bounded<T, L> {
    fn default() -> Self {
        Self(Vec::new(), PhantomData)
    }
}

impl<'de, T: Deserialize<'de>, L: ListLimit> Deserialize<'de> for Bounded<T, L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, L>(PhantomData<(T, L)>);
        impl<'de, T: Deserialize<'de>, L: ListLimit> Visitor<'de> for V<T, L> {
            type Value = Bounded<T, L>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {} {}", L::MAX, L::WHAT)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(L::MAX));
                while let Some(x) = seq.next_element()? {
                    if v.len() >= L::MAX {
                        return Err(de::Error::custom(format!(
                            "more than {} {}",
                            L::MAX,
                            L::WHAT
                        )));
                    }
                    v.push(x);
                }
                Ok(Bounded(v, PhantomData))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// The request parameters kinfer reads; others are skipped.
#[derive(Deserialize, Default)]
struct RequestParams<'a> {
    #[serde(borrow, default)]
    timeout: Option<&'a RawValue>,
    #[serde(borrow, default)]
    binary_data_output: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct InputParams<'a> {
    #[serde(borrow, default)]
    binary_data_size: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct OutputParams<'a> {
    #[serde(borrow, default)]
    binary_data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RequestHead<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow, default)]
    parameters: Option<RequestParams<'a>>,
    #[serde(borrow)]
    inputs: Bounded<InputHead<'a>, TensorsLimit>,
    #[serde(borrow, default)]
    outputs: Option<Bounded<OutputHead<'a>, TensorsLimit>>,
}

#[derive(Deserialize)]
struct InputHead<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: Bounded<i64, RankLimit>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(borrow, default)]
    parameters: Option<InputParams<'a>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputHead<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    parameters: Option<OutputParams<'a>>,
}

/// What a request asks for, checked and decoded.
#[derive(Debug)]
pub struct DecodedRequest {
    /// The request's `id`.
    pub id: Option<String>,
    /// Inputs, in request order.
    pub inputs: Vec<Tensor>,
    /// Requested output names (empty: all).
    pub requested: Vec<String>,
    /// Outputs to return as binary.
    pub binary: Vec<String>,
    /// Every output as binary (`binary_data_output`).
    pub all_binary: bool,
    /// Triton's `timeout` parameter (microseconds).
    pub timeout: Option<Duration>,
}

fn raw_bool(v: Option<&RawValue>) -> bool {
    v.and_then(|r| serde_json::from_str::<bool>(r.get()).ok())
        .unwrap_or(false)
}

/// Decodes an inference request body: JSON, or a JSON header of `header_len` bytes followed by
/// binary tensors (Triton's binary extension). Every input's shape is checked against `expect`
/// before its data is decoded.
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
    expect: Expect<'_>,
) -> Result<DecodedRequest, InferError> {
    let (json_part, mut binary) = match header_len {
        Some(n) => body.split_at_checked(n).ok_or_else(|| {
            InferError::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        })?,
        None => (body, &[][..]),
    };
    let head: RequestHead<'_> = serde_json::from_slice(json_part)
        .map_err(|e| InferError::invalid(format!("malformed inference request JSON: {e}")))?;
    if head.inputs.0.is_empty() {
        return Err(InferError::invalid("request has no inputs"));
    }
    let mut inputs = Vec::with_capacity(head.inputs.0.len());
    let mut total = 0usize;
    for i in head.inputs.0 {
        let name = i.name.as_ref();
        let dtype = DataType::from_oip(&i.datatype).ok_or_else(|| {
            InferError::invalid(format!("input '{name}': unknown datatype '{}'", i.datatype))
        })?;
        let spec = expect.spec(name)?;
        let shape = i.shape.0;
        let count = check_shape(spec, dtype, &shape, expect.max_rows)?;
        total = add_tensor_bytes(total, name, decoded_bytes(dtype, count), expect.max_bytes)?;
        let size_param = i.parameters.and_then(|p| p.binary_data_size);
        let data = match (size_param, i.data) {
            (Some(raw), _) => {
                let size = serde_json::from_str::<u64>(raw.get())
                    .ok()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        InferError::invalid(format!(
                            "input '{name}': binary_data_size must be a non-negative integer"
                        ))
                    })?;
                let (mine, rest) = binary.split_at_checked(size).ok_or_else(|| {
                    InferError::invalid(format!(
                        "input '{name}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                        binary.len()
                    ))
                })?;
                binary = rest;
                mine.to_vec()
            }
            (None, Some(raw)) => parse_data(name, dtype, &shape, count, raw)?,
            (None, None) => {
                return Err(InferError::invalid(format!(
                    "input '{name}' has neither data nor binary_data_size"
                )));
            }
        };
        inputs.push(Tensor {
            name: i.name.into_owned(),
            dtype,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(InferError::invalid(format!(
            "{} binary bytes after the inputs are not claimed by any binary_data_size",
            binary.len()
        )));
    }
    let params = head.parameters.unwrap_or_default();
    let outputs = head.outputs.unwrap_or_default().0;
    let binary_outputs = outputs
        .iter()
        .filter(|o| raw_bool(o.parameters.as_ref().and_then(|p| p.binary_data)))
        .map(|o| o.name.clone().into_owned())
        .collect();
    let timeout = match params.timeout {
        None => None,
        Some(raw) => Some(Duration::from_micros(
            serde_json::from_str::<u64>(raw.get()).map_err(|_| {
                InferError::invalid(
                    "parameter 'timeout' must be a non-negative integer (microseconds)",
                )
            })?,
        )),
    };
    Ok(DecodedRequest {
        id: head.id,
        inputs,
        requested: outputs.into_iter().map(|o| o.name.into_owned()).collect(),
        binary: binary_outputs,
        all_binary: raw_bool(params.binary_data_output),
        timeout,
    })
}
