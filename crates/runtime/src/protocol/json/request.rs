//! The request head, read in one streaming pass with no intermediate lists: each input is
//! checked against the model (name, datatype, shape, bytes) as soon as its object ends, and its
//! data parsed by [`super::data`] straight into a buffer the next request reuses ([`Decoded`]).
//! Lists are bounded (inputs, outputs, dimensions); unknown fields are skipped unread.

use std::{fmt, time::Duration};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use super::{
    data::parse_data_into,
    fields::{Outputs, ShapeInto, StrInto},
};
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

    /// A visitor's `expecting` for the list.
    fn expecting(f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of at most {} {}", Self::MAX, Self::WHAT)
    }

    /// The error for a list with more than [`Self::MAX`] entries.
    fn too_many<E: de::Error>() -> E {
        E::custom(format!("more than {} {}", Self::MAX, Self::WHAT))
    }
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

/// The fields of the request object kinfer reads (identified without allocating).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

/// The fields of an input object.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// What a request asks for, decoded into buffers that the next request reuses: a request like
/// the last one (same inputs, shapes and outputs) allocates nothing.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The request's `id` ([`Decoded::id`]), when `has_id`.
    id: String,
    has_id: bool,
    /// Inputs, in request order.
    pub inputs: Vec<Tensor>,
    /// Requested output names; only the first `n_outputs` are this request's.
    pub(super) outputs: Vec<String>,
    /// Whether each requested output goes as binary.
    pub(super) binary: Vec<bool>,
    pub(super) n_outputs: usize,
    /// Every output as binary (`binary_data_output`).
    pub all_binary: bool,
    /// Triton's `timeout` parameter (microseconds).
    pub timeout: Option<Duration>,
}

impl Decoded {
    /// The inputs (mutable: the server sorts them, or takes them for its workers) beside what
    /// else the request asked for.
    pub fn split(&mut self) -> (&mut Vec<Tensor>, Asked<'_>) {
        let asked = Asked {
            id: self.has_id.then_some(self.id.as_str()),
            outputs: self.outputs.get(..self.n_outputs).unwrap_or_default(),
            binary: &self.binary,
            all_binary: self.all_binary,
            timeout: self.timeout,
        };
        (&mut self.inputs, asked)
    }
}

/// What a request asked for besides its inputs.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The request's `id`.
    pub id: Option<&'a str>,
    outputs: &'a [String],
    binary: &'a [bool],
    /// Every output as binary (`binary_data_output`).
    pub all_binary: bool,
    /// Triton's `timeout` parameter (microseconds).
    pub timeout: Option<Duration>,
}

impl<'a> Asked<'a> {
    /// Requested output names (empty: all).
    pub fn requested(&self) -> &'a [String] {
        self.outputs
    }

    /// Whether output `name` goes as binary (Triton's binary extension).
    pub fn binary(&self, name: &str) -> bool {
        self.all_binary
            || self
                .outputs
                .iter()
                .zip(self.binary)
                .any(|(n, &b)| b && n == name)
    }
}

/// What a request asks for, checked and decoded (owned: [`decode_request`]).
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

pub(super) fn raw_bool(v: Option<&RawValue>) -> bool {
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
    let mut d = Decoded::default();
    decode_request_into(body, header_len, expect, &mut d)?;
    let (inputs, asked) = d.split();
    let binary = asked
        .outputs
        .iter()
        .zip(asked.binary)
        .filter(|(_, b)| **b)
        .map(|(n, _)| n.clone())
        .collect();
    Ok(DecodedRequest {
        id: asked.id.map(str::to_owned),
        requested: asked.outputs.to_vec(),
        binary,
        all_binary: asked.all_binary,
        timeout: asked.timeout,
        inputs: std::mem::take(inputs),
    })
}

/// [`decode_request`] into `into`'s buffers (see [`Decoded`]).
pub fn decode_request_into(
    body: &[u8],
    header_len: Option<usize>,
    expect: Expect<'_>,
    into: &mut Decoded,
) -> Result<(), InferError> {
    let (json_part, binary) = match header_len {
        Some(n) => body.split_at_checked(n).ok_or_else(|| {
            InferError::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        })?,
        None => (body, &[][..]),
    };
    into.has_id = false;
    into.n_outputs = 0;
    into.all_binary = false;
    into.timeout = None;
    let mut cx = Context {
        expect,
        binary,
        total: 0,
        error: None,
        n_inputs: 0,
    };
    let mut de = serde_json::Deserializer::from_slice(json_part);
    let parsed = Head {
        into: &mut *into,
        cx: &mut cx,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = cx.error.take() {
        return Err(e);
    }
    parsed.map_err(|e| InferError::invalid(format!("malformed inference request JSON: {e}")))?;
    into.inputs.truncate(cx.n_inputs);
    if into.inputs.is_empty() {
        return Err(InferError::invalid("request has no inputs"));
    }
    if !cx.binary.is_empty() {
        return Err(InferError::invalid(format!(
            "{} binary bytes after the inputs are not claimed by any binary_data_size",
            cx.binary.len()
        )));
    }
    Ok(())
}

/// What the decoding of one request shares: the model's expectations, the binary part not
/// claimed yet, the decoded bytes so far, and the first error (a serde error only aborts).
struct Context<'e, 'b> {
    expect: Expect<'e>,
    binary: &'b [u8],
    total: usize,
    error: Option<InferError>,
    n_inputs: usize,
}

impl Context<'_, '_> {
    fn fail<E: de::Error>(&mut self, e: InferError) -> E {
        self.error.get_or_insert(e);
        E::custom("invalid request")
    }
}

/// The request object.
struct Head<'d, 'c, 'e, 'b> {
    into: &'d mut Decoded,
    cx: &'c mut Context<'e, 'b>,
}

impl<'de> DeserializeSeed<'de> for Head<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Head<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Head { into, cx } = self;
        let mut seen_inputs = false;
        let mut params: Option<RequestParams<'de>> = None;
        while let Some(field) = map.next_key::<RequestField>()? {
            match field {
                RequestField::Id => {
                    into.has_id = map.next_value_seed(StrInto {
                        out: &mut into.id,
                        nullable: true,
                    })?;
                }
                RequestField::Parameters => params = map.next_value()?,
                RequestField::Inputs => {
                    if seen_inputs {
                        return Err(de::Error::duplicate_field("inputs"));
                    }
                    seen_inputs = true;
                    map.next_value_seed(Inputs {
                        into: &mut into.inputs,
                        cx: &mut *cx,
                    })?;
                }
                RequestField::Outputs => map.next_value_seed(Outputs { into: &mut *into })?,
                RequestField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !seen_inputs {
            return Err(de::Error::missing_field("inputs"));
        }
        let params = params.unwrap_or_default();
        into.all_binary = raw_bool(params.binary_data_output);
        if let Some(raw) = params.timeout {
            match serde_json::from_str::<u64>(raw.get()) {
                Ok(us) => into.timeout = Some(Duration::from_micros(us)),
                Err(_) => {
                    return Err(cx.fail(InferError::invalid(
                        "parameter 'timeout' must be a non-negative integer (microseconds)",
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The `inputs` array: each input is checked and decoded as it is read, into the next reused
/// tensor.
struct Inputs<'i, 'c, 'e, 'b> {
    into: &'i mut Vec<Tensor>,
    cx: &'c mut Context<'e, 'b>,
}

impl<'de> DeserializeSeed<'de> for Inputs<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Inputs<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        TensorsLimit::expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Inputs { into, cx } = self;
        let mut n = 0usize;
        loop {
            if into.len() <= n {
                into.push(Tensor {
                    name: String::new(),
                    dtype: DataType::Fp32,
                    shape: Vec::new(),
                    data: Vec::new(),
                });
            }
            let Some(slot) = into.get_mut(n) else {
                return Err(de::Error::custom("input slot missing"));
            };
            if seq
                .next_element_seed(Input { slot, cx: &mut *cx })?
                .is_none()
            {
                break;
            }
            n = n.saturating_add(1);
            if n > TensorsLimit::MAX {
                return Err(TensorsLimit::too_many());
            }
        }
        cx.n_inputs = n;
        Ok(())
    }
}

/// One input object, decoded into `slot` once all its fields are read.
struct Input<'s, 'c, 'e, 'b> {
    slot: &'s mut Tensor,
    cx: &'c mut Context<'e, 'b>,
}

impl<'de> DeserializeSeed<'de> for Input<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Input<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Input { slot, cx } = self;
        let (mut name, mut shape, mut datatype) = (false, false, None::<&'de str>);
        let mut dtype_text = String::new();
        let mut params: Option<InputParams<'de>> = None;
        let mut data: Option<&'de RawValue> = None;
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name => {
                    name = map.next_value_seed(StrInto {
                        out: &mut slot.name,
                        nullable: false,
                    })?;
                }
                InputField::Shape => {
                    map.next_value_seed(ShapeInto(&mut slot.shape))?;
                    shape = true;
                }
                InputField::Datatype => {
                    let mut borrowed = None;
                    map.next_value_seed(DatatypeText {
                        borrowed: &mut borrowed,
                        owned: &mut dtype_text,
                    })?;
                    datatype = Some(borrowed.unwrap_or(""));
                }
                InputField::Parameters => params = map.next_value()?,
                InputField::Data => data = map.next_value()?,
                InputField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !name {
            return Err(de::Error::missing_field("name"));
        }
        if !shape {
            return Err(de::Error::missing_field("shape"));
        }
        let Some(text) = datatype else {
            return Err(de::Error::missing_field("datatype"));
        };
        let text = if text.is_empty() {
            dtype_text.as_str()
        } else {
            text
        };
        let result = decode_input(
            slot,
            text,
            params.and_then(|p| p.binary_data_size),
            data,
            cx,
        );
        result.map_err(|e| cx.fail(e))
    }
}

/// A `datatype` string: borrowed from the body, or copied when it had escapes.
struct DatatypeText<'b, 'o, 'de> {
    borrowed: &'b mut Option<&'de str>,
    owned: &'o mut String,
}

impl<'de> DeserializeSeed<'de> for DatatypeText<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for DatatypeText<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a datatype name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        *self.borrowed = Some(v);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        v.clone_into(self.owned);
        Ok(())
    }
}

/// Checks one input against the model and decodes its data (binary or JSON) into `slot`.
fn decode_input(
    slot: &mut Tensor,
    datatype: &str,
    size_param: Option<&RawValue>,
    data: Option<&RawValue>,
    cx: &mut Context<'_, '_>,
) -> Result<(), InferError> {
    let name = slot.name.as_str();
    let dtype = DataType::from_oip(datatype).ok_or_else(|| {
        InferError::invalid(format!("input '{name}': unknown datatype '{datatype}'"))
    })?;
    slot.dtype = dtype;
    let spec = cx.expect.spec(name)?;
    let count = check_shape(spec, dtype, &slot.shape, cx.expect.max_rows)?;
    cx.total = add_tensor_bytes(
        cx.total,
        name,
        decoded_bytes(dtype, count),
        cx.expect.max_bytes,
    )?;
    match (size_param, data) {
        (Some(raw), _) => {
            let size = serde_json::from_str::<u64>(raw.get())
                .ok()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    InferError::invalid(format!(
                        "input '{name}': binary_data_size must be a non-negative integer"
                    ))
                })?;
            let (mine, rest) = cx.binary.split_at_checked(size).ok_or_else(|| {
                InferError::invalid(format!(
                    "input '{name}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                    cx.binary.len()
                ))
            })?;
            cx.binary = rest;
            slot.data.clear();
            slot.data.extend_from_slice(mine);
            Ok(())
        }
        (None, Some(raw)) => parse_data_into(name, dtype, &slot.shape, count, raw, &mut slot.data),
        (None, None) => Err(InferError::invalid(format!(
            "input '{name}' has neither data nor binary_data_size"
        ))),
    }
}
