//! Decision policy (the InferenceService's `spec.policy`): thresholds on one output's score mapped to labels,
//! returned as an extra `BYTES` output named `decision`, counted per label and version, and
//! written to the sampled decision log ([`crate::decision_log`]). A score that is NaN or infinite
//! matches no threshold and gets the reserved label `invalid` (never the default: a broken score
//! must not fail open). Pure functions.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    error::InferError,
    tensor::{DataType, Tensor, TensorView, first_per_row, push_bytes_element},
};

/// Name of the extra output.
pub const DECISION_OUTPUT: &str = "decision";
/// Most thresholds a policy may have.
pub const MAX_THRESHOLDS: usize = 7;
/// Most labels: the thresholds', the default and [`INVALID_LABEL`], so counters stay fixed-size.
pub const MAX_LABELS: usize = MAX_THRESHOLDS + 2;
/// The label of a row whose score is NaN or infinite; no policy may use it.
pub const INVALID_LABEL: &str = "invalid";

/// One threshold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Threshold {
    /// Scores at or above this get the label.
    pub min: f64,
    /// The label.
    pub label: String,
}

/// A decision policy as in the InferenceService spec.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The output holding one score per row.
    pub output: String,
    /// Thresholds; the highest `min` that the score reaches wins.
    pub thresholds: Vec<Threshold>,
    /// Label when no threshold is reached.
    #[serde(default = "default_label")]
    pub default: String,
}

fn default_label() -> String {
    "allow".into()
}

impl Policy {
    /// Reads a policy file (YAML or JSON) and checks it.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
        let mut p: Policy = serde_yaml::from_str(&text)
            .map_err(|e| format!("policy {} is not valid: {e}", path.display()))?;
        p.check()
            .map_err(|e| format!("policy {}: {e}", path.display()))?;
        p.thresholds.sort_by(|a, b| b.min.total_cmp(&a.min));
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if self.thresholds.is_empty() {
            return Err("thresholds must not be empty".into());
        }
        if self.thresholds.len() > MAX_THRESHOLDS {
            return Err(format!("at most {MAX_THRESHOLDS} thresholds"));
        }
        if let Some(l) = self
            .labels()
            .take(self.thresholds.len() + 1)
            .find(|l| *l == INVALID_LABEL)
        {
            return Err(format!(
                "label '{l}' is reserved for rows whose score is NaN or infinite; choose another"
            ));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !t.min.is_finite()) {
            return Err(format!(
                "threshold for '{}' must be a finite number",
                t.label
            ));
        }
        Ok(())
    }

    /// Every label: thresholds first (highest `min` first), then the default, then
    /// [`INVALID_LABEL`].
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.thresholds
            .iter()
            .map(|t| t.label.as_str())
            .chain([self.default.as_str(), INVALID_LABEL])
    }

    /// Index (into [`Policy::labels`]) of the label for one score; NaN and infinities get
    /// [`INVALID_LABEL`].
    pub fn classify(&self, score: f64) -> usize {
        if !score.is_finite() {
            return self.thresholds.len() + 1;
        }
        self.thresholds
            .iter()
            .position(|t| score >= t.min)
            .unwrap_or(self.thresholds.len())
    }

    /// The label at an index of [`Policy::labels`].
    pub fn label(&self, i: usize) -> &str {
        self.labels().nth(i).unwrap_or(INVALID_LABEL)
    }

    /// Refuses NaN in floating-point inputs: a NaN score has no label.
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), InferError> {
        for t in inputs {
            let nan = match t.dtype {
                DataType::Fp32 => t
                    .data
                    .chunks_exact(4)
                    .position(|c| c.try_into().is_ok_and(|b| f32::from_le_bytes(b).is_nan())),
                DataType::Fp64 => t
                    .data
                    .chunks_exact(8)
                    .position(|c| c.try_into().is_ok_and(|b| f64::from_le_bytes(b).is_nan())),
                DataType::Fp16 => t.data.chunks_exact(2).position(|c| {
                    c.try_into()
                        .is_ok_and(|b| half::f16::from_le_bytes(b).is_nan())
                }),
                _ => None,
            };
            if let Some(i) = nan {
                return Err(InferError::invalid(format!(
                    "input '{}': element {i} is NaN; the decision policy refuses NaN inputs",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// Scores of the policy's output, one per row (the first value of each row).
    pub fn scores(&self, outputs: &[TensorView<'_>]) -> Result<Vec<f64>, InferError> {
        let t = *outputs
            .iter()
            .find(|t| t.name == self.output)
            .ok_or_else(|| {
                InferError::Internal(format!(
                    "policy output '{}' is not an output of the model",
                    self.output
                ))
            })?;
        if !matches!(t.dtype, DataType::Fp32 | DataType::Fp64 | DataType::Fp16) {
            return Err(InferError::Internal(format!(
                "policy output '{}' is {}, not a floating-point score",
                self.output,
                t.dtype.as_oip()
            )));
        }
        let values = crate::tensor::to_f64(t);
        Ok(first_per_row(&values, t.rows().unwrap_or(1).max(1)))
    }

    /// The `decision` output for these scores: BYTES, one label per row.
    pub fn decision_tensor(&self, labels: &[usize]) -> Tensor {
        let names: Vec<&str> = self.labels().collect();
        let mut data = Vec::new();
        for &i in labels {
            let l = names.get(i).copied().unwrap_or(INVALID_LABEL);
            // Labels are short names from the policy file: far below a 4 GiB prefix.
            let _ = push_bytes_element(&mut data, l.as_bytes());
        }
        Tensor {
            name: DECISION_OUTPUT.into(),
            dtype: DataType::Bytes,
            shape: vec![i64::try_from(labels.len()).unwrap_or(i64::MAX)],
            data,
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut p = Policy {
            output: "score".into(),
            thresholds: vec![
                Threshold {
                    min: 0.5,
                    label: "review".into(),
                },
                Threshold {
                    min: 0.9,
                    label: "block".into(),
                },
            ],
            default: "allow".into(),
        };
        p.thresholds.sort_by(|a, b| b.min.total_cmp(&a.min));
        p
    }

    #[test]
    fn classifies_from_the_highest_threshold_down() {
        let p = policy();
        let labels: Vec<&str> = p.labels().collect();
        assert_eq!(labels[p.classify(0.95)], "block");
        assert_eq!(labels[p.classify(0.9)], "block");
        assert_eq!(labels[p.classify(0.6)], "review");
        assert_eq!(labels[p.classify(0.1)], "allow");
        // A broken score never falls through to the default.
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(labels[p.classify(bad)], INVALID_LABEL);
        }
    }

    #[test]
    fn the_invalid_label_is_reserved() {
        let mut p = policy();
        p.default = INVALID_LABEL.into();
        assert!(p.check().unwrap_err().contains("reserved"));
        let mut p = policy();
        p.thresholds[0].label = INVALID_LABEL.into();
        assert!(p.check().unwrap_err().contains("reserved"));
        assert!(policy().check().is_ok());
    }

    #[test]
    fn decision_tensor_is_triton_bytes() {
        let t = policy().decision_tensor(&[0, 2]);
        assert_eq!(t.shape, vec![2]);
        let items: Vec<&[u8]> = crate::tensor::split_bytes(&t.data).collect();
        assert_eq!(items, vec![&b"block"[..], &b"allow"[..]]);
    }

    #[test]
    fn nan_inputs_are_refused_with_the_element() {
        let t = Tensor {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape: vec![2],
            data: [1.0f32, f32::NAN]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect(),
        };
        let e = policy().check_inputs(&[t]).unwrap_err().to_string();
        assert!(e.contains("input 'x': element 1 is NaN"), "{e}");
    }
}
