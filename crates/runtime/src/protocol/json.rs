//! OIP v2 JSON on the wire, without `serde_json::Value`: a request is read in two passes over
//! the body. The first borrows everything but each input's `data`, which stays raw JSON text
//! (no allocation for it); once the input's name, datatype and shape have been checked against
//! the model, the second pass parses `data` with a visitor per datatype straight into the
//! tensor's little-endian bytes, allocating at most what the shape and the text can hold.
//! Responses are serialised from the tensors' bytes directly.
//!
//! Lists in a request are bounded (inputs, outputs, dimensions) so a body of small entries cannot
//! turn into many large ones; unknown fields are skipped without being kept.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::as_conversions,
    clippy::arithmetic_side_effects
)]

use std::{borrow::Cow, fmt, marker::PhantomData, time::Duration};

use serde::{
    Deserialize, Serialize,
    de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor},
    ser::{SerializeSeq, Serializer},
};
use serde_json::value::RawValue;

use crate::{
    error::InferError,
    tensor::{
        DataType, Expect, Tensor, add_tensor_bytes, check_shape, decoded_bytes, push_bytes_element,
    },
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

/// One element of `data` as it appeared in the JSON.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'a str),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Uint(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => {
                let short: String = s.chars().take(32).collect();
                let more = if short.len() < s.len() { "…" } else { "" };
                write!(f, "{short:?}{more}")
            }
        }
    }
}

/// `f64` to `f32`, rounding to nearest (what a JSON number means for an FP32 tensor).
#[allow(clippy::as_conversions)] // the rounding is the conversion wanted
fn to_f32(x: f64) -> f32 {
    x as f32
}

/// An integer to `f64`, rounding to nearest.
#[allow(clippy::as_conversions)] // the rounding is the conversion wanted
fn int_to_f64(x: i128) -> f64 {
    x as f64
}

/// The state of one `data` parse: where the bytes go and how many elements were seen.
struct DataState {
    dtype: DataType,
    expected: usize,
    count: usize,
    out: Vec<u8>,
    /// The first problem, kept so the message carries no parser position.
    error: Option<String>,
}

impl DataState {
    fn fail<E: de::Error>(&mut self, msg: String) -> E {
        self.error.get_or_insert(msg);
        E::custom("invalid data")
    }

    fn push<E: de::Error>(&mut self, v: Scalar<'_>) -> Result<(), E> {
        let i = self.count;
        self.count = self.count.saturating_add(1);
        if i >= self.expected {
            return Ok(()); // only counted: the count mismatch is reported after the parse
        }
        let dtype = self.dtype;
        let bad = |s: &mut Self| {
            s.fail(format!(
                "element {i} ({v}) is not a valid {}",
                dtype.as_oip()
            ))
        };
        macro_rules! int {
            ($t:ty) => {{
                let n = match v {
                    Scalar::Int(n) => <$t>::try_from(n).ok(),
                    Scalar::Uint(n) => <$t>::try_from(n).ok(),
                    _ => None,
                };
                match n {
                    Some(n) => self.out.extend_from_slice(&n.to_le_bytes()),
                    None => return Err(bad(self)),
                }
            }};
        }
        let float = match v {
            Scalar::Float(x) => Some(x),
            Scalar::Int(n) => Some(int_to_f64(i128::from(n))),
            Scalar::Uint(n) => Some(int_to_f64(i128::from(n))),
            _ => None,
        };
        match dtype {
            DataType::Bool => match v {
                Scalar::Bool(b) => self.out.push(u8::from(b)),
                _ => return Err(bad(self)),
            },
            DataType::Uint8 => int!(u8),
            DataType::Uint16 => int!(u16),
            DataType::Uint32 => int!(u32),
            DataType::Uint64 => int!(u64),
            DataType::Int8 => int!(i8),
            DataType::Int16 => int!(i16),
            DataType::Int32 => int!(i32),
            DataType::Int64 => int!(i64),
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => {
                let Some(x) = float else {
                    return Err(bad(self));
                };
                match dtype {
                    DataType::Fp16 => self
                        .out
                        .extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                    DataType::Fp32 => self.out.extend_from_slice(&to_f32(x).to_le_bytes()),
                    _ => self.out.extend_from_slice(&x.to_le_bytes()),
                }
            }
            DataType::Bytes => match v {
                Scalar::Str(s) => {
                    if let Err(e) = push_bytes_element(&mut self.out, s.as_bytes()) {
                        return Err(self.fail(format!("element {i}: {e}")));
                    }
                }
                _ => return Err(bad(self)),
            },
        }
        Ok(())
    }
}

/// Parses one level of `data`: an array (recursing into nested arrays) or a single value.
struct Elements<'s> {
    st: &'s mut DataState,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self
                .st
                .fail(format!("data is nested more than {MAX_DEPTH} levels deep")));
        }
        let depth = self.depth.saturating_add(1);
        while seq
            .next_element_seed(Elements {
                st: &mut *self.st,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self
            .st
            .fail("data must be an array of values, not an object".into()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.st.fail("data contains null".into()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.st.push(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.st.push(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.st.push(Scalar::Uint(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.st.push(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.st.push(Scalar::Str(v))
    }
}

/// Parses one input's raw `data` into `count` elements of `dtype` (little-endian bytes).
fn parse_data(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    count: usize,
    raw: &RawValue,
) -> Result<Vec<u8>, InferError> {
    let text = raw.get();
    // Each element takes at least two characters of text (a digit and a separator), so the
    // text bounds what can arrive whatever the shape claims.
    let capacity = count
        .min((text.len() / 2).saturating_add(1))
        .saturating_mul(dtype.size().unwrap_or(4));
    let mut st = DataState {
        dtype,
        expected: count,
        count: 0,
        out: Vec::with_capacity(capacity),
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Elements {
        st: &mut st,
        depth: 0,
    }
    .deserialize(&mut de);
    if let Err(e) = parsed {
        let msg = st.error.take().unwrap_or_else(|| e.to_string());
        return Err(InferError::invalid(format!("input '{name}': {msg}")));
    }
    if st.count != count {
        return Err(InferError::invalid(format!(
            "input '{name}': shape {shape:?} needs {count} elements but data has {}",
            st.count
        )));
    }
    Ok(st.out)
}

/// A tensor's elements as a JSON array.
struct DataJson<'a>(DataType, &'a [u8]);

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

#[derive(Serialize)]
struct ResponseHead<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: &'a str,
    outputs: Vec<OutputJson<'a>>,
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
    let mut raw_len = 0usize;
    let head = ResponseHead {
        id,
        model_name: model,
        model_version: version,
        outputs: outputs
            .iter()
            .map(|t| {
                let as_binary = binary(&t.name);
                if as_binary {
                    raw_len = raw_len.saturating_add(t.data.len());
                }
                OutputJson {
                    name: &t.name,
                    datatype: t.dtype.as_oip(),
                    shape: &t.shape,
                    parameters: as_binary.then_some(BinaryParam {
                        binary_data_size: t.data.len(),
                    }),
                    data: (!as_binary).then_some(DataJson(t.dtype, &t.data)),
                }
            })
            .collect(),
    };
    let mut body = Vec::with_capacity(256);
    serde_json::to_writer(&mut body, &head)
        .map_err(|e| InferError::Internal(format!("cannot encode the response: {e}")))?;
    if raw_len == 0 {
        return Ok(EncodedResponse {
            body,
            header_len: None,
        });
    }
    let header_len = body.len();
    body.reserve(raw_len);
    for t in outputs.iter().filter(|t| binary(&t.name)) {
        body.extend_from_slice(&t.data);
    }
    Ok(EncodedResponse {
        body,
        header_len: Some(header_len),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests
mod tests {
    use super::*;
    use crate::tensor::TensorSpec;
    use serde_json::json;

    fn spec(dtype: DataType, shape: Vec<i64>) -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "x".into(),
            dtype,
            shape,
        }]
    }

    fn expect(specs: &[TensorSpec]) -> Expect<'_> {
        Expect {
            model: "m",
            inputs: specs,
            max_rows: Some(8),
            max_bytes: 1 << 20,
        }
    }

    fn request(dtype: DataType, shape: &[i64], data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": shape, "datatype": dtype.as_oip(), "data": data}]}))
            .unwrap()
    }

    fn decode_one(
        dtype: DataType,
        shape: &[i64],
        data: serde_json::Value,
    ) -> Result<Vec<u8>, InferError> {
        let specs = spec(dtype, vec![-1; shape.len()]);
        decode_request(&request(dtype, shape, data), None, expect(&specs))
            .map(|mut d| d.inputs.remove(0).data)
    }

    fn encode_data(dtype: DataType, data: &[u8]) -> serde_json::Value {
        serde_json::to_value(DataJson(dtype, data)).unwrap()
    }

    #[test]
    fn json_round_trip_for_every_datatype() {
        let cases = [
            (DataType::Bool, json!([true, false])),
            (DataType::Uint8, json!([0, 255])),
            (DataType::Uint16, json!([0, 65535])),
            (DataType::Uint32, json!([0, 4294967295u64])),
            (DataType::Uint64, json!([0, u64::MAX])),
            (DataType::Int8, json!([-128, 127])),
            (DataType::Int16, json!([-32768, 32767])),
            (DataType::Int32, json!([-2147483648i64, 7])),
            (DataType::Int64, json!([i64::MIN, i64::MAX])),
            (DataType::Fp16, json!([0.5, -2.0])),
            (DataType::Fp32, json!([0.25, -1.5])),
            (DataType::Fp64, json!([0.1, 1e300])),
            (DataType::Bytes, json!(["ab", ""])),
        ];
        for (dt, data) in cases {
            let bytes = decode_one(dt, &[2], data.clone()).unwrap();
            if let Some(size) = dt.size() {
                assert_eq!(bytes.len(), 2 * size);
            }
            assert_eq!(encode_data(dt, &bytes), data, "{dt:?}");
        }
    }

    #[test]
    fn nested_json_is_flattened() {
        let b = decode_one(DataType::Int32, &[2, 2], json!([[1, 2], [3, 4]])).unwrap();
        assert_eq!(encode_data(DataType::Int32, &b), json!([1, 2, 3, 4]));
    }

    #[test]
    fn json_errors_name_the_input_and_problem() {
        let cases = [
            (
                DataType::Int8,
                vec![1],
                json!([300]),
                "input 'x': element 0 (300) is not a valid INT8",
            ),
            (
                DataType::Fp32,
                vec![3],
                json!([1.0]),
                "needs 3 elements but data has 1",
            ),
            (
                DataType::Fp32,
                vec![1],
                json!(["a"]),
                "element 0 (\"a\") is not a valid FP32",
            ),
            (
                DataType::Int32,
                vec![1],
                json!([1.5]),
                "is not a valid INT32",
            ),
            (
                DataType::Fp32,
                vec![2],
                json!([1, null]),
                "data contains null",
            ),
            (DataType::Fp32, vec![1], json!({"a": 1}), "not an object"),
            (DataType::Bool, vec![1], json!([1]), "not a valid BOOL"),
        ];
        for (dt, shape, data, want) in cases {
            let e = decode_one(dt, &shape, data).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(!e.contains("line 1"), "no parser position in {e}");
        }
        let deep = (0..40).fold(json!(1), |v, _| json!([v]));
        let e = decode_one(DataType::Fp32, &[1], deep)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested more than 32 levels"), "{e}");
    }

    #[test]
    fn a_lying_shape_allocates_nothing_large() {
        // Overflowing products are refused before any data is read.
        for shape in [vec![1, 2147483648i64, 2147483648], vec![1, i64::MAX]] {
            let e = decode_one(DataType::Fp32, &shape, json!([]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("than any request can hold"), "{e}");
        }
        // A batch dimension is bounded by --max-request-rows first.
        let e = decode_one(DataType::Fp32, &[2147483648, 2147483648], json!([]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds the limit of 8 rows"), "{e}");
        // A product that fits a usize but not the message limit is refused by the limit.
        let e = decode_one(DataType::Fp32, &[1, 1 << 40], json!([]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("over the limit of 1048576 bytes (--max-message-bytes)"),
            "{e}"
        );
        // A shape within the limit with too little data: counted, not allocated.
        let e = decode_one(DataType::Fp32, &[1, 200_000], json!([1.0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 200000 elements but data has 1"), "{e}");
    }

    #[test]
    fn lists_are_bounded() {
        let inputs: Vec<_> = (0..300)
            .map(
                |i| json!({"name": format!("x{i}"), "shape": [1], "datatype": "FP32", "data": [1]}),
            )
            .collect();
        let body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap();
        let specs = spec(DataType::Fp32, vec![-1]);
        let e = decode_request(&body, None, expect(&specs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 256 tensors"), "{e}");
        let e = decode_one(DataType::Fp32, &[1; 40], json!([1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 32 dimensions"), "{e}");
    }

    #[test]
    fn binary_and_json_inputs_and_parameters() {
        let specs = vec![TensorSpec {
            name: "x".into(),
            dtype: DataType::Int32,
            shape: vec![2],
        }];
        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"timeout":5000,"other":{"deep":[1,2]}}}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let d = decode_request(&body, Some(head.len()), expect(&specs)).unwrap();
        assert_eq!(d.inputs[0].data, vec![1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(d.binary, vec!["y".to_string()]);
        assert_eq!(d.timeout, Some(Duration::from_millis(5)));
        let e = decode_request(&body, Some(10_000), expect(&specs))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Inference-Header-Content-Length is 10000"),
            "{e}"
        );
        let e = decode_request(&body[..head.len() + 4], Some(head.len()), expect(&specs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds the 4 binary bytes"), "{e}");
        let e = decode_request(b"{nope", None, expect(&specs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed inference request JSON"), "{e}");
        let bad_timeout = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","data":[1,2]}],"parameters":{"timeout":-1}}"#;
        let e = decode_request(bad_timeout, None, expect(&specs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameter 'timeout'"), "{e}");
    }

    #[test]
    fn responses_carry_json_and_binary_outputs() {
        let outputs = vec![
            Tensor {
                name: "a".into(),
                dtype: DataType::Fp32,
                shape: vec![2],
                data: [f32::NAN, 0.1]
                    .iter()
                    .flat_map(|f| f.to_le_bytes())
                    .collect(),
            },
            Tensor {
                name: "b".into(),
                dtype: DataType::Int8,
                shape: vec![1],
                data: vec![7],
            },
        ];
        let r = encode_response("m", "v1", Some("r1"), &outputs, |n| n == "b").unwrap();
        let n = r.header_len.unwrap();
        let head: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
        assert_eq!(head["id"], "r1");
        assert_eq!(head["model_version"], "v1");
        assert_eq!(head["outputs"][0]["data"], json!(["NaN", 0.1]));
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 1);
        assert_eq!(&r.body[n..], &[7]);
    }
}
