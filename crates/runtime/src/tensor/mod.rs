//! Tensors as the server holds them: the OIP datatypes, one little-endian byte buffer per tensor
//! (the form Triton's binary extension and gRPC `raw_*_contents` already use, and the form
//! batching concatenates), and the size arithmetic every decoder checks before it allocates;
//! [`validate`] checks a request's tensors against a model's declared inputs.
//!
//! Everything here is pure (no I/O, no ONNX Runtime) and reachable from request bytes, so it may
//! not panic: the lints below refuse `unwrap`, `expect`, indexing, `as` casts and unchecked
//! arithmetic, and the property tests feed it arbitrary shapes and bytes.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::as_conversions,
    clippy::arithmetic_side_effects
)]

pub mod validate;

pub use validate::{Expect, add_tensor_bytes, check_shape, decoded_bytes, validate_inputs};

/// An Open Inference Protocol datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`, one byte each.
    Bool,
    /// `UINT8`
    Uint8,
    /// `UINT16`
    Uint16,
    /// `UINT32`
    Uint32,
    /// `UINT64`
    Uint64,
    /// `INT8`
    Int8,
    /// `INT16`
    Int16,
    /// `INT32`
    Int32,
    /// `INT64`
    Int64,
    /// `FP16`
    Fp16,
    /// `FP32`
    Fp32,
    /// `FP64`
    Fp64,
    /// `BYTES`: each element a 4-byte little-endian length then the bytes (Triton's layout).
    Bytes,
}

impl DataType {
    /// Every datatype, for tests and tables.
    pub const ALL: [DataType; 13] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    /// Parses an OIP datatype name.
    pub fn from_oip(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "UINT8" => Self::Uint8,
            "UINT16" => Self::Uint16,
            "UINT32" => Self::Uint32,
            "UINT64" => Self::Uint64,
            "INT8" => Self::Int8,
            "INT16" => Self::Int16,
            "INT32" => Self::Int32,
            "INT64" => Self::Int64,
            "FP16" => Self::Fp16,
            "FP32" => Self::Fp32,
            "FP64" => Self::Fp64,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// The OIP name.
    pub fn as_oip(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for the variable-length `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
            Self::Bytes => return None,
        })
    }

    /// Whether this is FP16, FP32 or FP64.
    pub fn is_float(self) -> bool {
        matches!(self, Self::Fp16 | Self::Fp32 | Self::Fp64)
    }
}

/// One named tensor: datatype, shape and its elements as little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Input or output name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Dimensions, all >= 0.
    pub shape: Vec<i64>,
    /// Elements, little-endian, row-major.
    pub data: Vec<u8>,
}

impl Tensor {
    /// The first dimension as a row count (1 for a 0-d tensor; `None` when negative).
    pub fn rows(&self) -> Option<usize> {
        self.view().rows()
    }

    /// A borrowed view of this tensor.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// A tensor borrowed from wherever it lives: a request's buffers, or ONNX Runtime's output of a
/// run that has not been released yet. What the request path reads and encodes, so that an
/// answer goes from the run to the wire without an owned copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorView<'a> {
    /// Input or output name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DataType,
    /// Dimensions, all >= 0.
    pub shape: &'a [i64],
    /// Elements, little-endian, row-major.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// The first dimension as a row count (1 for a 0-d tensor; `None` when negative).
    pub fn rows(&self) -> Option<usize> {
        match self.shape.first() {
            None => Some(1),
            Some(&d) => usize::try_from(d).ok(),
        }
    }

    /// An owned copy (for a shadow, a pair or a test: what outlives the run).
    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            name: self.name.to_owned(),
            dtype: self.dtype,
            shape: self.shape.to_vec(),
            data: self.data.to_vec(),
        }
    }
}

impl<'a> From<&'a Tensor> for TensorView<'a> {
    fn from(t: &'a Tensor) -> Self {
        t.view()
    }
}

/// The declared shape of a model input or output: `-1` for a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Dimensions, `-1` where dynamic.
    pub shape: Vec<i64>,
}

/// Number of elements of a shape; `None` on a negative dimension or overflow (a shape with a
/// zero dimension has 0 elements, however large the others).
pub fn element_count(shape: &[i64]) -> Option<usize> {
    if shape.iter().any(|&d| d < 0) {
        return None;
    }
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Bytes that `count` elements of `dtype` take; `None` for BYTES or on overflow.
pub fn byte_size(dtype: DataType, count: usize) -> Option<usize> {
    dtype.size().and_then(|s| count.checked_mul(s))
}

/// Why a `BYTES` buffer is not a whole number of length-prefixed elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesLayoutError {
    /// Fewer than 4 bytes where a length prefix should start.
    #[error("BYTES data ends {left} byte(s) after element {index}, inside a 4-byte length prefix")]
    TruncatedPrefix {
        /// Elements read before the problem.
        index: usize,
        /// Bytes left over.
        left: usize,
    },
    /// A length prefix claims more bytes than are left.
    #[error("BYTES element {index} claims {claimed} bytes but only {left} are left")]
    Overrun {
        /// The element.
        index: usize,
        /// Its length prefix.
        claimed: usize,
        /// Bytes after the prefix.
        left: usize,
    },
}

/// Counts the elements of a `BYTES` buffer, which must be exactly a sequence of 4-byte
/// little-endian lengths each followed by that many bytes: no trailing bytes, no overrun.
pub fn bytes_elements(data: &[u8]) -> Result<usize, BytesLayoutError> {
    let mut rest = data;
    let mut index = 0usize;
    while !rest.is_empty() {
        let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
            return Err(BytesLayoutError::TruncatedPrefix {
                index,
                left: rest.len(),
            });
        };
        let claimed = usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
        let Some((_, next)) = after.split_at_checked(claimed) else {
            return Err(BytesLayoutError::Overrun {
                index,
                claimed,
                left: after.len(),
            });
        };
        rest = next;
        index = index.saturating_add(1);
    }
    Ok(index)
}

/// Iterates the elements of a `BYTES` buffer (4-byte length prefixes); stops at a malformed one.
/// Use [`bytes_elements`] to check a buffer first.
pub fn split_bytes(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (prefix, after) = data.split_first_chunk::<4>()?;
        let n = usize::try_from(u32::from_le_bytes(*prefix)).ok()?;
        let (item, next) = after.split_at_checked(n)?;
        data = next;
        Some(item)
    })
}

/// Appends one `BYTES` element (length prefix and bytes); refuses elements of 4 GiB or more.
pub fn push_bytes_element(out: &mut Vec<u8>, item: &[u8]) -> Result<(), BytesTooLong> {
    let n = u32::try_from(item.len()).map_err(|_| BytesTooLong(item.len()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(item);
    Ok(())
}

/// A `BYTES` element too long for its 4-byte length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a BYTES element of {0} bytes does not fit a 4-byte length prefix")]
pub struct BytesTooLong(pub usize);

/// `i64`/`u64` to `f64`, rounding to the nearest representable value (statistics only).
#[allow(clippy::as_conversions)] // the rounding of a 64-bit integer to f64 is what is wanted here
fn int_f64<T: Into<i128>>(v: T) -> f64 {
    v.into() as f64
}

/// Element `i` of a numeric tensor as `f64`, read in place (no allocation); `None` for BYTES or
/// past the end. The request path's statistics use this.
pub fn element_f64<'a>(t: impl Into<TensorView<'a>>, i: usize) -> Option<f64> {
    let t = t.into();
    let size = t.dtype.size()?;
    let start = i.checked_mul(size)?;
    let c = t.data.get(start..start.checked_add(size)?)?;
    element_from_le(t.dtype, c)
}

/// One little-endian element as `f64`; `None` when `c` is not exactly one element.
fn element_from_le(dtype: DataType, c: &[u8]) -> Option<f64> {
    Some(match dtype {
        DataType::Fp32 => f64::from(f32::from_le_bytes(c.try_into().ok()?)),
        DataType::Fp64 => f64::from_le_bytes(c.try_into().ok()?),
        DataType::Fp16 => half::f16::from_le_bytes(c.try_into().ok()?).to_f64(),
        DataType::Int64 => int_f64(i64::from_le_bytes(c.try_into().ok()?)),
        DataType::Int32 => f64::from(i32::from_le_bytes(c.try_into().ok()?)),
        DataType::Int16 => f64::from(i16::from_le_bytes(c.try_into().ok()?)),
        DataType::Int8 => f64::from(i8::from_le_bytes(c.try_into().ok()?)),
        DataType::Uint8 | DataType::Bool => f64::from(u8::from_le_bytes(c.try_into().ok()?)),
        DataType::Uint16 => f64::from(u16::from_le_bytes(c.try_into().ok()?)),
        DataType::Uint32 => f64::from(u32::from_le_bytes(c.try_into().ok()?)),
        DataType::Uint64 => int_f64(u64::from_le_bytes(c.try_into().ok()?)),
        DataType::Bytes => return None,
    })
}

/// The elements of a numeric tensor as `f64` (BYTES gives an empty vector; a trailing partial
/// element is ignored). Allocates: for policies, shadow comparison and golden sets, not
/// per-request statistics.
pub fn to_f64<'a>(t: impl Into<TensorView<'a>>) -> Vec<f64> {
    let t = t.into();
    let Some(size) = t.dtype.size() else {
        return Vec::new();
    };
    t.data
        .chunks_exact(size)
        .filter_map(|c| element_from_le(t.dtype, c))
        .collect()
}

/// The first value of each of `rows` equal rows of `values` (empty rows are skipped).
pub fn first_per_row(values: &[f64], rows: usize) -> Vec<f64> {
    let per = values.len().checked_div(rows).unwrap_or(0).max(1);
    values
        .chunks(per)
        .filter_map(|r| r.first().copied())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::as_conversions)] // tests
mod tests {
    use super::*;

    #[test]
    fn bytes_layout_is_exact() {
        let mut ok = Vec::new();
        push_bytes_element(&mut ok, b"ab").unwrap();
        push_bytes_element(&mut ok, b"").unwrap();
        assert_eq!(bytes_elements(&ok), Ok(2));
        let mut trailing = ok.clone();
        trailing.extend_from_slice(&[1, 0]);
        assert!(matches!(
            bytes_elements(&trailing),
            Err(BytesLayoutError::TruncatedPrefix { index: 2, left: 2 })
        ));
        let mut overrun = ok.clone();
        overrun.extend_from_slice(&[9, 0, 0, 0, b'x']);
        assert!(matches!(
            bytes_elements(&overrun),
            Err(BytesLayoutError::Overrun {
                index: 2,
                claimed: 9,
                left: 1
            })
        ));
        let items: Vec<&[u8]> = split_bytes(&ok).collect();
        assert_eq!(items, vec![&b"ab"[..], &b""[..]]);
    }
}
