//! Tensors on the wire and in the server: the OIP datatypes, a raw little-endian byte buffer per
//! tensor (the form Triton's binary extension and gRPC `raw_*_contents` already use, and the form
//! batching concatenates), decoding from JSON, and validation against a model's metadata.
//!
//! Everything here is pure: no I/O, no ONNX Runtime.

use serde_json::Value;

use super::error::InferError;

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

/// Number of elements of a shape; `None` on a negative dimension or overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Decodes the `data` of a JSON input (flat or nested arrays) into little-endian bytes.
pub fn decode_json_data(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    data: &Value,
) -> Result<Vec<u8>, InferError> {
    let expected = element_count(shape).ok_or_else(|| {
        InferError::invalid(format!(
            "input '{name}': shape {shape:?} has a negative dimension or is too large"
        ))
    })?;
    let mut flat = Vec::with_capacity(expected);
    flatten(data, &mut flat, 0).map_err(|e| InferError::invalid(format!("input '{name}': {e}")))?;
    if flat.len() != expected {
        return Err(InferError::invalid(format!(
            "input '{name}': shape {shape:?} needs {expected} elements but data has {}",
            flat.len()
        )));
    }
    let bad = |i: usize, v: &Value| {
        InferError::invalid(format!(
            "input '{name}': element {i} ({v}) is not a valid {}",
            dtype.as_oip()
        ))
    };
    let size = dtype.size().unwrap_or(0);
    let mut out = Vec::with_capacity(expected * size);
    macro_rules! ints {
        ($t:ty) => {
            for (i, v) in flat.iter().enumerate() {
                let n: $t = v
                    .as_i64()
                    .and_then(|n| <$t>::try_from(n).ok())
                    .or_else(|| v.as_u64().and_then(|n| <$t>::try_from(n).ok()))
                    .ok_or_else(|| bad(i, v))?;
                out.extend_from_slice(&n.to_le_bytes());
            }
        };
    }
    match dtype {
        DataType::Bool => {
            for (i, v) in flat.iter().enumerate() {
                out.push(u8::from(v.as_bool().ok_or_else(|| bad(i, v))?));
            }
        }
        DataType::Uint8 => ints!(u8),
        DataType::Uint16 => ints!(u16),
        DataType::Uint32 => ints!(u32),
        DataType::Uint64 => ints!(u64),
        DataType::Int8 => ints!(i8),
        DataType::Int16 => ints!(i16),
        DataType::Int32 => ints!(i32),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => {
            for (i, v) in flat.iter().enumerate() {
                let f = v.as_f64().ok_or_else(|| bad(i, v))?;
                out.extend_from_slice(&half::f16::from_f64(f).to_le_bytes());
            }
        }
        DataType::Fp32 => {
            for (i, v) in flat.iter().enumerate() {
                let f = v.as_f64().ok_or_else(|| bad(i, v))? as f32;
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        DataType::Fp64 => {
            for (i, v) in flat.iter().enumerate() {
                out.extend_from_slice(&v.as_f64().ok_or_else(|| bad(i, v))?.to_le_bytes());
            }
        }
        DataType::Bytes => {
            for (i, v) in flat.iter().enumerate() {
                let s = v.as_str().ok_or_else(|| bad(i, v))?;
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    Ok(out)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("data is nested more than 32 levels deep".into());
    }
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Object(_) => Err("data must be an array of values, not an object".into()),
        Value::Null => Err("data contains null".into()),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

/// Renders little-endian tensor bytes as a flat JSON array.
pub fn encode_json_data(dtype: DataType, data: &[u8]) -> Value {
    macro_rules! nums {
        ($t:ty, $n:expr) => {
            Value::Array(
                data.chunks_exact($n)
                    .map(|c| Value::from(<$t>::from_le_bytes(c.try_into().expect("chunk size"))))
                    .collect(),
            )
        };
    }
    match dtype {
        DataType::Bool => Value::Array(data.iter().map(|&b| Value::Bool(b != 0)).collect()),
        DataType::Uint8 => nums!(u8, 1),
        DataType::Uint16 => nums!(u16, 2),
        DataType::Uint32 => nums!(u32, 4),
        DataType::Uint64 => nums!(u64, 8),
        DataType::Int8 => nums!(i8, 1),
        DataType::Int16 => nums!(i16, 2),
        DataType::Int32 => nums!(i32, 4),
        DataType::Int64 => nums!(i64, 8),
        DataType::Fp16 => Value::Array(
            data.chunks_exact(2)
                .map(|c| json_float(half::f16::from_le_bytes([c[0], c[1]]).to_f64()))
                .collect(),
        ),
        DataType::Fp32 => Value::Array(
            data.chunks_exact(4)
                .map(|c| json_float(f32::from_le_bytes(c.try_into().expect("4")) as f64))
                .collect(),
        ),
        DataType::Fp64 => Value::Array(
            data.chunks_exact(8)
                .map(|c| json_float(f64::from_le_bytes(c.try_into().expect("8"))))
                .collect(),
        ),
        DataType::Bytes => Value::Array(
            split_bytes(data)
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
    }
}

/// Element `i` of a numeric tensor as `f64`, read in place (no allocation); `None` for BYTES or
/// past the end. The request path's statistics use this.
pub fn element_f64(t: &Tensor, i: usize) -> Option<f64> {
    let size = t.dtype.size()?;
    let c = t.data.get(i * size..(i + 1) * size)?;
    Some(match t.dtype {
        DataType::Fp32 => f32::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Fp64 => f64::from_le_bytes(c.try_into().ok()?),
        DataType::Fp16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
        DataType::Int64 => i64::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Int32 => i32::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Int16 => i16::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Int8 => c[0] as i8 as f64,
        DataType::Uint8 | DataType::Bool => c[0] as f64,
        DataType::Uint16 => u16::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Uint32 => u32::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Uint64 => u64::from_le_bytes(c.try_into().ok()?) as f64,
        DataType::Bytes => return None,
    })
}

/// The elements of a numeric tensor as `f64` (BYTES gives an empty vector). Allocates: for
/// policies, shadow comparison and golden sets, not per-request statistics.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    macro_rules! m {
        ($ty:ty, $n:expr) => {
            t.data
                .chunks_exact($n)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")) as f64)
                .collect()
        };
    }
    match t.dtype {
        DataType::Fp32 => m!(f32, 4),
        DataType::Fp64 => m!(f64, 8),
        DataType::Fp16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DataType::Int64 => m!(i64, 8),
        DataType::Int32 => m!(i32, 4),
        DataType::Int16 => m!(i16, 2),
        DataType::Int8 => m!(i8, 1),
        DataType::Uint8 => m!(u8, 1),
        DataType::Uint16 => m!(u16, 2),
        DataType::Uint32 => m!(u32, 4),
        DataType::Uint64 => m!(u64, 8),
        DataType::Bool => t.data.iter().map(|&b| f64::from(b)).collect(),
        DataType::Bytes => Vec::new(),
    }
}

/// JSON has no NaN or infinity; OIP servers send them as strings, as Triton does.
fn json_float(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
}

/// Iterates the elements of a `BYTES` buffer (4-byte length prefixes); stops at a malformed one.
pub fn split_bytes(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
        let item = data.get(4..4 + n)?;
        data = &data[4 + n..];
        Some(item)
    })
}

/// Checks a request's inputs against the model: every input present once, known names, the
/// declared datatype and rank, fixed dimensions, batch limit, and the byte length.
/// Returns the batch size (first dimension) when the model batches on dimension 0.
pub fn validate_inputs(
    model: &str,
    specs: &[TensorSpec],
    inputs: &[Tensor],
    max_batch: Option<usize>,
) -> Result<usize, InferError> {
    for (i, t) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(InferError::invalid(format!(
                "input '{}' is given more than once",
                t.name
            )));
        }
        if !specs.iter().any(|s| s.name == t.name) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferError::invalid(format!(
                "model '{model}' has no input '{}'; its inputs are {known:?}",
                t.name
            )));
        }
    }
    let mut batch = None;
    for spec in specs {
        let t = inputs.iter().find(|t| t.name == spec.name).ok_or_else(|| {
            InferError::invalid(format!("missing input '{}' of model '{model}'", spec.name))
        })?;
        if t.dtype != spec.dtype {
            return Err(InferError::invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                t.name,
                t.dtype.as_oip(),
                spec.dtype.as_oip()
            )));
        }
        if t.shape.len() != spec.shape.len() {
            return Err(InferError::invalid(format!(
                "input '{}': shape {:?} has rank {} but the model expects {:?}",
                t.name,
                t.shape,
                t.shape.len(),
                spec.shape
            )));
        }
        for (i, (&got, &want)) in t.shape.iter().zip(&spec.shape).enumerate() {
            if got < 0 || (want >= 0 && got != want) {
                return Err(InferError::invalid(format!(
                    "input '{}': dimension {i} is {got} but the model expects {:?}",
                    t.name, spec.shape
                )));
            }
        }
        if let Some(&first) = t.shape.first() {
            let first = first as usize;
            if first == 0 && spec.shape[0] < 0 {
                return Err(InferError::invalid(format!(
                    "input '{}': empty batch (dimension 0 is 0)",
                    t.name
                )));
            }
            if spec.shape[0] < 0 {
                if let Some(max) = max_batch
                    && first > max
                {
                    return Err(InferError::invalid(format!(
                        "input '{}': batch of {first} exceeds the limit of {max}",
                        t.name
                    )));
                }
                match batch {
                    None => batch = Some(first),
                    Some(b) if b != first => {
                        return Err(InferError::invalid(format!(
                            "input '{}': batch dimension {first} differs from the other inputs' {b}",
                            t.name
                        )));
                    }
                    _ => {}
                }
            }
        }
        let count = element_count(&t.shape).ok_or_else(|| {
            InferError::invalid(format!(
                "input '{}': shape {:?} is too large",
                t.name, t.shape
            ))
        })?;
        match spec.dtype.size() {
            Some(size) => {
                let want = count.checked_mul(size).ok_or_else(|| {
                    InferError::invalid(format!(
                        "input '{}': shape {:?} is too large",
                        t.name, t.shape
                    ))
                })?;
                if t.data.len() != want {
                    return Err(InferError::invalid(format!(
                        "input '{}': shape {:?} of {} needs {want} bytes but {} were sent",
                        t.name,
                        t.shape,
                        t.dtype.as_oip(),
                        t.data.len()
                    )));
                }
            }
            None => {
                if split_bytes(&t.data).count() != count {
                    return Err(InferError::invalid(format!(
                        "input '{}': BYTES data does not hold {count} length-prefixed elements",
                        t.name
                    )));
                }
            }
        }
    }
    Ok(batch.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape: vec![-1, 3],
        }]
    }

    fn fp32(name: &str, shape: Vec<i64>, v: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: DataType::Fp32,
            shape,
            data: v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        }
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
        ];
        for (dt, data) in cases {
            let bytes = decode_json_data("x", dt, &[2], &data).unwrap();
            assert_eq!(bytes.len(), 2 * dt.size().unwrap());
            assert_eq!(encode_json_data(dt, &bytes), data, "{dt:?}");
        }
    }

    #[test]
    fn nested_json_is_flattened() {
        let b = decode_json_data("x", DataType::Int32, &[2, 2], &json!([[1, 2], [3, 4]])).unwrap();
        assert_eq!(encode_json_data(DataType::Int32, &b), json!([1, 2, 3, 4]));
    }

    #[test]
    fn json_errors_name_the_input_and_problem() {
        let e = decode_json_data("x", DataType::Int8, &[1], &json!([300])).unwrap_err();
        assert!(
            e.to_string()
                .contains("input 'x': element 0 (300) is not a valid INT8"),
            "{e}"
        );
        let e = decode_json_data("x", DataType::Fp32, &[3], &json!([1.0])).unwrap_err();
        assert!(
            e.to_string().contains("needs 3 elements but data has 1"),
            "{e}"
        );
        let e = decode_json_data("x", DataType::Fp32, &[1], &json!(["a"])).unwrap_err();
        assert!(e.to_string().contains("not a valid FP32"), "{e}");
        let e = decode_json_data("x", DataType::Fp32, &[-1], &json!([])).unwrap_err();
        assert!(e.to_string().contains("negative dimension"), "{e}");
    }

    #[test]
    fn non_finite_floats_become_strings() {
        let b: Vec<u8> = [f32::NAN, 1.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(encode_json_data(DataType::Fp32, &b), json!(["NaN", 1.0]));
    }

    #[test]
    fn validation_accepts_a_good_batch() {
        let t = fp32("x", vec![2, 3], &[0.0; 6]);
        assert_eq!(validate_inputs("m", &spec(), &[t], Some(8)).unwrap(), 2);
    }

    #[test]
    fn validation_refuses_each_problem_with_its_reason() {
        let cases: Vec<(Vec<Tensor>, &str)> = vec![
            (vec![fp32("y", vec![1, 3], &[0.0; 3])], "has no input 'y'"),
            (vec![], "missing input 'x'"),
            (vec![fp32("x", vec![1, 4], &[0.0; 4])], "dimension 1 is 4"),
            (vec![fp32("x", vec![3], &[0.0; 3])], "has rank 1"),
            (
                vec![fp32("x", vec![1, 3], &[0.0; 2])],
                "needs 12 bytes but 8 were sent",
            ),
            (vec![fp32("x", vec![0, 3], &[])], "empty batch"),
            (
                vec![fp32("x", vec![9, 3], &[0.0; 27])],
                "exceeds the limit of 8",
            ),
            (
                vec![
                    fp32("x", vec![1, 3], &[0.0; 3]),
                    fp32("x", vec![1, 3], &[0.0; 3]),
                ],
                "more than once",
            ),
            (
                vec![Tensor {
                    name: "x".into(),
                    dtype: DataType::Fp64,
                    shape: vec![1, 3],
                    data: vec![0; 24],
                }],
                "datatype FP64 does not match the model's FP32",
            ),
        ];
        for (inputs, want) in cases {
            let e = validate_inputs("m", &spec(), &inputs, Some(8))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }
}
