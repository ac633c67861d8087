//! A request's tensors against a model's declared inputs: names, datatypes, ranks, fixed and
//! batch dimensions, and the size limits, checked from the declared shapes before any data is
//! decoded, then against the decoded bytes.

use super::{DataType, Tensor, TensorSpec, byte_size, bytes_elements, element_count};
use crate::error::InferError;

/// What a request's tensors are checked against: the model's inputs and the size limits.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// Model name, for messages.
    pub model: &'a str,
    /// The version's inputs.
    pub inputs: &'a [TensorSpec],
    /// Largest batch dimension (`None` when the model does not batch).
    pub max_rows: Option<usize>,
    /// Largest total of decoded tensor bytes in one request.
    pub max_bytes: usize,
}

impl Expect<'_> {
    /// The model's input called `name`, or the error naming the inputs it has.
    pub fn spec(&self, name: &str) -> Result<&TensorSpec, InferError> {
        self.inputs.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            InferError::invalid(format!(
                "model '{}' has no input '{name}'; its inputs are {known:?}",
                self.model
            ))
        })
    }
}

/// Checks one input's datatype and declared shape against the model before any of its data is
/// decoded: the datatype, the rank, fixed dimensions, the batch dimension (not empty, not over
/// `max_rows`), and that its element count and byte size can be held. Returns the element count.
pub fn check_shape(
    spec: &TensorSpec,
    dtype: DataType,
    shape: &[i64],
    max_rows: Option<usize>,
) -> Result<usize, InferError> {
    let name = &spec.name;
    if dtype != spec.dtype {
        return Err(InferError::invalid(format!(
            "input '{name}': datatype {} does not match the model's {}",
            dtype.as_oip(),
            spec.dtype.as_oip()
        )));
    }
    if shape.len() != spec.shape.len() {
        return Err(InferError::invalid(format!(
            "input '{name}': shape {shape:?} has rank {} but the model expects {:?}",
            shape.len(),
            spec.shape
        )));
    }
    for (i, (&got, &want)) in shape.iter().zip(&spec.shape).enumerate() {
        if got < 0 {
            return Err(InferError::invalid(format!(
                "input '{name}': shape {shape:?} has a negative dimension ({got} at {i})"
            )));
        }
        if want >= 0 && got != want {
            return Err(InferError::invalid(format!(
                "input '{name}': dimension {i} is {got} but the model expects {:?}",
                spec.shape
            )));
        }
    }
    if let (Some(&first), Some(&declared)) = (shape.first(), spec.shape.first())
        && declared < 0
    {
        if first == 0 {
            return Err(InferError::invalid(format!(
                "input '{name}': empty batch (dimension 0 is 0)"
            )));
        }
        if let Some(max) = max_rows
            && usize::try_from(first).map_or(true, |f| f > max)
        {
            return Err(InferError::invalid(format!(
                "input '{name}': batch of {first} exceeds the limit of {max} rows (--max-request-rows)"
            )));
        }
    }
    let count = element_count(shape).ok_or_else(|| {
        InferError::invalid(format!(
            "input '{name}': shape {shape:?} has more elements than any request can hold"
        ))
    })?;
    if dtype.size().is_some() && byte_size(dtype, count).is_none() {
        return Err(InferError::invalid(format!(
            "input '{name}': shape {shape:?} of {} has more bytes than any request can hold",
            dtype.as_oip()
        )));
    }
    Ok(count)
}

/// The bytes a checked input will occupy once decoded: its element size times its count, and for
/// BYTES at least the 4-byte prefix of each element.
pub fn decoded_bytes(dtype: DataType, count: usize) -> usize {
    byte_size(dtype, count).unwrap_or_else(|| count.saturating_mul(4))
}

/// Adds one input's decoded bytes to a request's running total, refusing a request whose
/// tensors would hold more than `max_bytes`; the message names the input that crosses the limit.
pub fn add_tensor_bytes(
    total: usize,
    name: &str,
    bytes: usize,
    max_bytes: usize,
) -> Result<usize, InferError> {
    let total = total.saturating_add(bytes);
    if total > max_bytes {
        return Err(InferError::invalid(format!(
            "input '{name}': the request's tensors need {total} bytes or more, over the limit of {max_bytes} bytes (--max-message-bytes)"
        )));
    }
    Ok(total)
}

/// Checks a request's decoded inputs against the model: every input present once, known names,
/// the shape rules of [`check_shape`], one batch size across inputs, the total size against
/// `max_bytes`, and the data length (exact bytes, or exactly `count` well-formed BYTES elements).
/// Returns the batch size (dimension 0) when the model batches on it, else 1.
pub fn validate_inputs(
    model: &str,
    specs: &[TensorSpec],
    inputs: &[Tensor],
    max_rows: Option<usize>,
    max_bytes: usize,
) -> Result<usize, InferError> {
    for (i, t) in inputs.iter().enumerate() {
        if inputs.iter().take(i).any(|o| o.name == t.name) {
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
    let mut batch: Option<usize> = None;
    let mut total = 0usize;
    for spec in specs {
        let t = inputs.iter().find(|t| t.name == spec.name).ok_or_else(|| {
            InferError::invalid(format!("missing input '{}' of model '{model}'", spec.name))
        })?;
        let count = check_shape(spec, t.dtype, &t.shape, max_rows)?;
        total = add_tensor_bytes(total, &t.name, t.data.len(), max_bytes)?;
        if spec.shape.first().is_some_and(|&d| d < 0) {
            let first = t.rows().unwrap_or(0);
            match batch {
                None => batch = Some(first),
                Some(b) if b != first => {
                    return Err(InferError::invalid(format!(
                        "input '{}': batch dimension {first} differs from the other inputs' {b}",
                        t.name
                    )));
                }
                Some(_) => {}
            }
        }
        match byte_size(spec.dtype, count) {
            Some(want) => {
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
            None => match bytes_elements(&t.data) {
                Ok(n) if n == count => {}
                Ok(n) => {
                    return Err(InferError::invalid(format!(
                        "input '{}': shape {:?} needs {count} BYTES elements but data holds {n}",
                        t.name, t.shape
                    )));
                }
                Err(e) => {
                    return Err(InferError::invalid(format!("input '{}': {e}", t.name)));
                }
            },
        }
    }
    Ok(batch.unwrap_or(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::as_conversions)] // tests
mod tests {
    use super::*;
    use crate::tensor::push_bytes_element;

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

    const MAX: usize = 1 << 20;

    #[test]
    fn validation_accepts_a_good_batch() {
        let t = fp32("x", vec![2, 3], &[0.0; 6]);
        assert_eq!(
            validate_inputs("m", &spec(), &[t], Some(8), MAX).unwrap(),
            2
        );
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
                "exceeds the limit of 8 rows",
            ),
            (vec![fp32("x", vec![-2, 3], &[])], "negative dimension"),
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
            let e = validate_inputs("m", &spec(), &inputs, Some(8), MAX)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn overflowing_shapes_are_refused_not_multiplied() {
        let s = TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape: vec![-1, -1],
        };
        for shape in [
            vec![2147483648, 2147483648],
            vec![1, i64::MAX],
            vec![i64::MAX, i64::MAX],
        ] {
            let e = check_shape(&s, DataType::Fp32, &shape, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("than any request can hold"), "{shape:?}: {e}");
        }
        // 2^40 elements fit a usize but not the message limit.
        let count = check_shape(&s, DataType::Fp32, &[1, 1 << 40], None).unwrap();
        let e = add_tensor_bytes(0, "x", decoded_bytes(DataType::Fp32, count), MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the limit of 1048576 bytes"), "{e}");
    }

    #[test]
    fn bytes_inputs_with_trailing_bytes_are_refused() {
        let s = vec![TensorSpec {
            name: "s".into(),
            dtype: DataType::Bytes,
            shape: vec![-1],
        }];
        let mut data = Vec::new();
        push_bytes_element(&mut data, b"hello").unwrap();
        let good = Tensor {
            name: "s".into(),
            dtype: DataType::Bytes,
            shape: vec![1],
            data: data.clone(),
        };
        assert_eq!(
            validate_inputs("m", &s, std::slice::from_ref(&good), None, MAX),
            Ok(1)
        );
        let mut bad = good;
        bad.data.push(0);
        let e = validate_inputs("m", &s, &[bad], None, MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside a 4-byte length prefix"), "{e}");
    }
}
