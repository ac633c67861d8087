//! Golden sets: `.npz` files (numpy's zip of `.npy` arrays) holding `input.<name>` arrays for
//! every model input and `output.<name>` reference outputs, all with the samples along dimension
//! 0 — what `numpy.savez` writes from the training framework. [`evaluate`] runs a loaded version
//! on the inputs and compares with numpy's `allclose` rule: `|a - e| <= atol + rtol * |e|`.
//!
//! A golden set comes from the artifact, so it is read as hostile input: sizes declared in the
//! zip directory and in `.npy` headers are only believed once the bytes are there (at most
//! [`MAX_GOLDEN_BYTES`] in all once decompressed), and 0-d, negative, overflowing or mismatched
//! arrays are refused with a message naming the array.

use std::{collections::BTreeMap, io::Read, path::Path};

use crate::{
    models::version::LoadedVersion,
    tensor::{DataType, Tensor, byte_size, element_count, to_f64, validate_inputs},
};

/// The most bytes a golden set may hold once decompressed.
pub const MAX_GOLDEN_BYTES: u64 = 256 * 1024 * 1024;

/// The arrays of a golden set by name.
pub struct GoldenSet {
    /// `input.<name>` arrays.
    pub inputs: BTreeMap<String, Tensor>,
    /// `output.<name>` arrays.
    pub outputs: BTreeMap<String, Tensor>,
}

fn npy_dtype(descr: &str) -> Option<DataType> {
    Some(match descr.trim_start_matches(['<', '|', '=']) {
        "b1" => DataType::Bool,
        "u1" => DataType::Uint8,
        "u2" => DataType::Uint16,
        "u4" => DataType::Uint32,
        "u8" => DataType::Uint64,
        "i1" => DataType::Int8,
        "i2" => DataType::Int16,
        "i4" => DataType::Int32,
        "i8" => DataType::Int64,
        "f2" => DataType::Fp16,
        "f4" => DataType::Fp32,
        "f8" => DataType::Fp64,
        _ => return None,
    })
}

/// Parses one `.npy` file (format 1.0–3.0, little-endian, C order) of at least one dimension.
pub fn parse_npy(name: &str, mut bytes: Vec<u8>) -> Result<Tensor, String> {
    if bytes.get(..6) != Some(b"\x93NUMPY".as_slice()) {
        return Err(format!("{name}: not a .npy array"));
    }
    let (hlen, start) = match (bytes.get(6), bytes.get(8..10), bytes.get(8..12)) {
        (Some(1), Some(&[a, b]), _) => (usize::from(u16::from_le_bytes([a, b])), 10usize),
        (Some(2 | 3), _, Some(&[a, b, c, d])) => (
            usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX),
            12,
        ),
        (Some(v), _, _) => {
            return Err(format!("{name}: unsupported or truncated .npy version {v}"));
        }
        (None, _, _) => return Err(format!("{name}: not a .npy array")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("{name}: truncated .npy header"))?;
    let header = bytes
        .get(start..end)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| format!("{name}: .npy header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header
            .get(i..)?
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| format!("{name}: .npy header has no descr"))?;
    if descr.starts_with('>') {
        return Err(format!(
            "{name}: big-endian arrays are not supported; save with '<' byte order"
        ));
    }
    let dtype = npy_dtype(descr).ok_or_else(|| format!("{name}: unsupported dtype {descr}"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(format!(
            "{name}: Fortran-order arrays are not supported; save with numpy.ascontiguousarray"
        ));
    }
    let shape_txt = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| format!("{name}: .npy header has no shape"))?;
    let shape: Vec<i64> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .filter(|&d| d >= 0)
                .ok_or_else(|| format!("{name}: bad shape ({shape_txt})"))
        })
        .collect::<Result<_, _>>()?;
    if shape.is_empty() {
        return Err(format!(
            "{name}: a 0-d array; golden arrays hold the samples along dimension 0"
        ));
    }
    let want = element_count(&shape)
        .and_then(|n| byte_size(dtype, n))
        .ok_or_else(|| format!("{name}: shape {shape:?} is too large"))?;
    let data = bytes.split_off(end);
    if data.len() != want {
        return Err(format!(
            "{name}: shape {shape:?} needs {want} bytes, file has {}",
            data.len()
        ));
    }
    Ok(Tensor {
        name: name.to_owned(),
        dtype,
        shape,
        data,
    })
}

impl GoldenSet {
    /// Reads a `.npz` golden set.
    pub fn read(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open golden set {}: {e}", path.display()))?;
        let file_len = file
            .metadata()
            .map_err(|e| format!("cannot read golden set {}: {e}", path.display()))?
            .len();
        let mut left = MAX_GOLDEN_BYTES;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| format!("golden set {} is not an .npz: {e}", path.display()))?;
        let mut set = GoldenSet {
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
        };
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| format!("golden set {}: {e}", path.display()))?;
            let Some(stem) = entry.name().strip_suffix(".npy").map(str::to_owned) else {
                continue;
            };
            // The directory's size is a claim: it only bounds the first allocation, together
            // with the file's real size and what is left of the limit.
            let hint = entry.size().min(file_len).min(left);
            let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
            let read = (&mut entry)
                .take(left.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| format!("golden set {}: {stem}.npy: {e}", path.display()))?;
            left = left
                .checked_sub(u64::try_from(read).unwrap_or(u64::MAX))
                .ok_or_else(|| {
                    format!(
                        "golden set {} holds more than {MAX_GOLDEN_BYTES} bytes once decompressed",
                        path.display()
                    )
                })?;
            let err = |e: String| format!("golden set {}: {e}", path.display());
            if let Some(n) = stem.strip_prefix("input.") {
                set.inputs
                    .insert(n.to_owned(), parse_npy(n, bytes).map_err(err)?);
            } else if let Some(n) = stem.strip_prefix("output.") {
                set.outputs
                    .insert(n.to_owned(), parse_npy(n, bytes).map_err(err)?);
            }
        }
        if set.inputs.is_empty() || set.outputs.is_empty() {
            return Err(format!(
                "golden set {} needs arrays named input.<name> and output.<name>; found none of one kind",
                path.display()
            ));
        }
        let mut dims = set
            .inputs
            .iter()
            .map(|(n, t)| (format!("input.{n}"), t))
            .chain(set.outputs.iter().map(|(n, t)| (format!("output.{n}"), t)))
            .map(|(n, t)| (n, t.shape.first().copied().unwrap_or(0)));
        if let Some((first, samples)) = dims.next() {
            if samples == 0 {
                return Err(format!(
                    "golden set {}: {first} has no samples",
                    path.display()
                ));
            }
            if let Some((other, n)) = dims.find(|(_, n)| *n != samples) {
                return Err(format!(
                    "golden set {}: {first} has {samples} samples but {other} has {n}; every array holds the same samples along dimension 0",
                    path.display()
                ));
            }
        }
        Ok(set)
    }
}

/// What an evaluation found (the admin API's answer).
pub use kinfer_contract::admin::EvaluateAnswer as EvaluateReport;

fn decisions(values: &[f64], samples: usize) -> Vec<usize> {
    let per = values.len() / samples.max(1);
    values
        .chunks_exact(per.max(1))
        .map(|row| {
            if per == 1 {
                usize::from(row[0] >= 0.5)
            } else {
                crate::models::stats::argmax(row)
            }
        })
        .collect()
}

fn rows(t: &Tensor, from: usize, n: usize, total: usize) -> Result<Tensor, String> {
    let row = t.data.len() / total.max(1);
    let mut shape = t.shape.clone();
    if let Some(d) = shape.first_mut() {
        *d = i64::try_from(n).map_err(|e| e.to_string())?;
    }
    let data = t
        .data
        .get(from * row..(from + n) * row)
        .ok_or_else(|| {
            format!(
                "golden input.{} has fewer than {} samples",
                t.name,
                from + n
            )
        })?
        .to_vec();
    Ok(Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data,
    })
}

/// Runs the golden inputs through `v` and compares with the references.
pub async fn evaluate(
    v: &LoadedVersion,
    set: &GoldenSet,
    atol: f64,
    rtol: f64,
) -> Result<EvaluateReport, String> {
    let mut inputs = Vec::new();
    for spec in &v.info.inputs {
        let t = set.inputs.get(&spec.name).ok_or_else(|| {
            format!(
                "golden set has no input.{} for model input '{}'",
                spec.name, spec.name
            )
        })?;
        if t.dtype != spec.dtype {
            return Err(format!(
                "golden input.{} is {} but the model takes {}",
                spec.name,
                t.dtype.as_oip(),
                spec.dtype.as_oip()
            ));
        }
        inputs.push(t.clone());
    }
    let samples = inputs
        .first()
        .and_then(|t| t.rows())
        .ok_or("the model has no inputs to run the golden set on")?;
    let chunk = v.max_batch().unwrap_or(samples.max(1)).max(1);
    let mut got: Vec<Vec<Tensor>> = Vec::new();
    let mut from = 0;
    while from < samples.max(1) {
        let n = chunk.min(samples.max(1) - from);
        let part: Vec<Tensor> = if v.max_batch().is_some() {
            inputs
                .iter()
                .map(|t| rows(t, from, n, samples))
                .collect::<Result<_, _>>()?
        } else {
            inputs.clone()
        };
        let rows_n = if v.max_batch().is_some() { n } else { 1 };
        validate_inputs(
            &v.info.name,
            &v.info.inputs,
            &part,
            v.max_batch(),
            usize::MAX,
        )
        .map_err(|e| format!("golden inputs do not fit the model: {e}"))?;
        let out = v
            .infer(part, rows_n, None)
            .await
            .map_err(|e| e.to_string())?;
        got.push(out.outputs);
        from += n;
        if v.max_batch().is_none() {
            break;
        }
    }
    let mut report = EvaluateReport {
        version: v.info.version.clone(),
        samples: samples as u64,
        max_abs_error: 0.0,
        max_rel_error: 0.0,
        mismatched_elements: 0,
        agreement: 1.0,
        within_tolerance: true,
        atol,
        rtol,
    };
    let mut compared = 0;
    for (oi, spec) in v.info.outputs.iter().enumerate() {
        let Some(expected) = set.outputs.get(&spec.name) else {
            continue;
        };
        compared += 1;
        let actual: Vec<f64> = got
            .iter()
            .flat_map(|outs| outs.get(oi).map(to_f64).unwrap_or_default())
            .collect();
        let expected = to_f64(expected);
        if actual.len() != expected.len() {
            return Err(format!(
                "output '{}': the model produced {} values but the golden set has {}",
                spec.name,
                actual.len(),
                expected.len()
            ));
        }
        for (&a, &e) in actual.iter().zip(&expected) {
            let abs = (a - e).abs();
            let abs = if abs.is_nan() { f64::INFINITY } else { abs };
            report.max_abs_error = report.max_abs_error.max(abs);
            if e != 0.0 {
                report.max_rel_error = report.max_rel_error.max(abs / e.abs());
            }
            if abs > atol + rtol * e.abs() {
                report.mismatched_elements += 1;
            }
        }
        if oi == 0 || compared == 1 {
            let (da, de) = (decisions(&actual, samples), decisions(&expected, samples));
            let same = da.iter().zip(&de).filter(|(a, b)| a == b).count();
            report.agreement = same as f64 / de.len().max(1) as f64;
        }
    }
    if compared == 0 {
        return Err("golden set has no output.<name> matching any model output".into());
    }
    report.within_tolerance = report.mismatched_elements == 0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_npy_headers() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let t = parse_npy("x", npy("<f4", "(2, 2)", &data)).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DataType::Fp32, vec![2, 2]));
        let t = parse_npy("s", npy("<i8", "(3,)", &[0; 24])).unwrap();
        assert_eq!(t.shape, vec![3]);
        let refused = [
            (npy("<f4", "(2, 2)", &data[..8]), "needs 16 bytes"),
            (npy(">f4", "(1,)", &data[..4]), "big-endian"),
            (b"hello world".to_vec(), "not a .npy"),
            (npy("<f4", "()", &data[..4]), "0-d array"),
            (npy("<f4", "(-1,)", &[]), "bad shape"),
            (npy("<f4", "(4611686018427387904, 8)", &[]), "too large"),
            (npy("<f8", "(3037000500, 3037000500)", &[]), "too large"),
            (
                b"\x93NUMPY\x01\x00\xff\xff{".to_vec(),
                "truncated .npy header",
            ),
            (b"\x93NUMPY\x02\x00".to_vec(), "truncated .npy version 2"),
            (b"\x93NUMPY".to_vec(), "not a .npy"),
        ];
        for (bytes, want) in refused {
            let e = parse_npy("x", bytes).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn decisions_use_argmax_or_threshold() {
        assert_eq!(decisions(&[0.1, 0.9, 0.8, 0.2], 2), vec![1, 0]);
        assert_eq!(decisions(&[0.7, 0.2], 2), vec![1, 0]);
    }
}
