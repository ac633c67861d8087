//! One input's `data`: a visitor per datatype that writes each JSON element straight into the
//! tensor's little-endian bytes, counting what arrives against what the checked shape needs and
//! allocating no more than the shape and the text can hold.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::request::MAX_DEPTH;
use crate::{
    error::InferError,
    tensor::{DataType, push_bytes_element},
};

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
struct DataState<'o> {
    dtype: DataType,
    expected: usize,
    count: usize,
    out: &'o mut Vec<u8>,
    /// The first problem, kept so the message carries no parser position.
    error: Option<String>,
}

impl DataState<'_> {
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
                    if let Err(e) = push_bytes_element(self.out, s.as_bytes()) {
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
struct Elements<'s, 'o> {
    st: &'s mut DataState<'o>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elements<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_, '_> {
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

/// Parses one input's raw `data` into `count` elements of `dtype` (little-endian bytes) in
/// `out`, replacing what it held; its capacity is reused, so a request like the last one
/// allocates nothing.
pub(super) fn parse_data_into(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    count: usize,
    raw: &RawValue,
    out: &mut Vec<u8>,
) -> Result<(), InferError> {
    let text = raw.get();
    // Each element takes at least two characters of text (a digit and a separator), so the
    // text bounds what can arrive whatever the shape claims.
    let capacity = count
        .min((text.len() / 2).saturating_add(1))
        .saturating_mul(dtype.size().unwrap_or(4));
    out.clear();
    out.reserve(capacity);
    let mut st = DataState {
        dtype,
        expected: count,
        count: 0,
        out,
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
    Ok(())
}
