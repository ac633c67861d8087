//! The verification Job's two results, each written by its container as one JSON object to
//! stdout and to its termination message, and read by the operator into the ModelVersion's
//! `Verified` and `Validated` conditions: [`VerifyResult`] from `kinfer-watcher check` (fetch,
//! digests, signature) and [`ValidateResult`] from `kinfer-runtime --check` (load, golden set).

use serde::{Deserialize, Serialize};

use crate::exit;

/// `kinfer-watcher check`'s result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyResult {
    /// Fetched, and the signature and every file digest hold (or unsigned and allowed).
    pub ok: bool,
    /// `sha256:…` of the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Fingerprint of the key that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Whether a signature was verified.
    #[serde(default)]
    pub signed: bool,
    /// A reason from [`crate::reasons`] (or `SignatureVerified`, `Unsigned`, `InvalidArguments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failure may pass on a retry (a fetch that failed); a refusal never does.
    #[serde(default)]
    pub retryable: bool,
}

impl VerifyResult {
    /// The container's exit code: [`exit::OK`], [`exit::RETRY`] or [`exit::REFUSED`].
    pub fn exit_code(&self) -> i32 {
        match (self.ok, self.retryable) {
            (true, _) => exit::OK,
            (false, true) => exit::RETRY,
            (false, false) => exit::REFUSED,
        }
    }
}

/// `kinfer-runtime --check`'s result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidateResult {
    /// Loaded and, with a golden set, within tolerance and agreement.
    pub ok: bool,
    /// A reason from [`crate::reasons`] (`GoldenSetMatched` when it passed with a golden set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human sentence with the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Golden samples evaluated.
    #[serde(default)]
    pub samples: u64,
    /// Largest absolute error.
    #[serde(default)]
    pub max_abs_error: f64,
    /// Largest relative error.
    #[serde(default)]
    pub max_rel_error: f64,
    /// Decision agreement.
    #[serde(default)]
    pub agreement: f64,
}

impl ValidateResult {
    /// The container's exit code: every refusal here is a property of the artifact.
    pub fn exit_code(&self) -> i32 {
        if self.ok { exit::OK } else { exit::REFUSED }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_choose_their_exit_code() {
        let v = VerifyResult {
            ok: false,
            reason: Some(crate::reasons::FETCH_FAILED.into()),
            message: Some("store down".into()),
            retryable: true,
            ..Default::default()
        };
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<VerifyResult>(&s).unwrap(), v);
        assert_eq!(v.exit_code(), exit::RETRY);
        assert_eq!(
            VerifyResult {
                retryable: false,
                ..v
            }
            .exit_code(),
            exit::REFUSED
        );
        let r = ValidateResult {
            ok: true,
            samples: 64,
            agreement: 1.0,
            ..Default::default()
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""maxAbsError":0.0"#), "{s}");
        assert_eq!(serde_json::from_str::<ValidateResult>(&s).unwrap(), r);
        assert_eq!(r.exit_code(), exit::OK);
    }
}
