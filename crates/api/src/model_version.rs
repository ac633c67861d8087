//! `ModelVersion` (`mv`): one immutable, signed model artifact in S3 and the checks it must pass
//! before any InferenceService may serve it.
// clippy reads the repeated `type_ = ...` keys of kube's `printcolumn(...)` entries as duplicated
// attributes; they belong to different columns.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A model artifact that kinfer may serve: where it lives, how it is signed and how its outputs
/// are checked. The spec is immutable once created: publish a new ModelVersion for new bytes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kinfer.dev",
    version = "v1alpha1",
    kind = "ModelVersion",
    plural = "modelversions",
    singular = "modelversion",
    shortname = "mv",
    category = "kinfer",
    namespaced,
    status = "ModelVersionStatus",
    doc = "A signed ONNX model artifact in S3 and the checks it must pass before it may serve.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "Validated",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Validated\")].status",
        priority = "1"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.digest",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("ModelVersion spec is immutable: create a new ModelVersion for a new artifact"))]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionSpec {
    /// Logical model name, for example `fraud`. Shown in metrics and decision logs.
    #[x_kube(validation = Rule::new("self.size() > 0").message("model must not be empty"))]
    pub model: String,
    /// Version label of this artifact, for example `v8`. InferenceServices name the
    /// ModelVersion object; this label is what responses report as `model_version`.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')").message("version must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"))]
    pub version: String,
    /// Where the artifact lives.
    pub source: ModelSource,
    /// How the artifact is signed, and which keys are trusted.
    #[serde(default)]
    pub signature: SignaturePolicy,
    /// The numerical gate: a golden set of inputs and reference outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
}

/// The S3 location of an artifact.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// `s3://bucket/prefix/`: a directory that holds `model.onnx`, the signature bundle and the
    /// golden set.
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')").message("uri must look like s3://bucket/prefix/ (a lower-case S3 bucket name, then an optional prefix)"))]
    pub uri: String,
    /// S3-compatible endpoint URL (`http://minio.storage:9000`); the AWS endpoint when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region for request signing; `us-east-1` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Use path-style addressing (`endpoint/bucket/key`), as MinIO and most S3-compatible stores
    /// need. Defaults to true when `endpoint` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Name of a Secret in the same namespace with keys `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`). Without it the default AWS
    /// credential chain of the pod is used (IRSA, instance profile, environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Signature requirements (OpenSSF model-signing bundles).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignaturePolicy {
    /// Refuse the artifact unless its signature verifies. Setting this to false serves unsigned
    /// artifacts and records a Warning Event each time.
    #[serde(default = "default_true")]
    pub required: bool,
    /// File name of the signature bundle inside the source directory.
    #[serde(default = "default_bundle")]
    pub bundle: String,
    /// Where the trusted public keys (PEM, ECDSA P-256 or P-384) are. Every key found there is
    /// trusted; the artifact must verify with one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<TrustedKeys>,
}

impl Default for SignaturePolicy {
    fn default() -> Self {
        Self {
            required: true,
            bundle: default_bundle(),
            trusted_keys: None,
        }
    }
}

/// A ConfigMap or Secret holding PEM public keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("trustedKeys needs exactly one of configMap or secret"))]
#[serde(rename_all = "camelCase")]
pub struct TrustedKeys {
    /// Name of a ConfigMap in the same namespace; every key ending in `.pem` is a public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// Name of a Secret in the same namespace; every key ending in `.pem` is a public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The numerical gate: a new version must reproduce the reference outputs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// File name of the golden set (`.npz`) inside the source directory: arrays named
    /// `input.<name>` for each model input and `output.<name>` for each reference output.
    #[serde(default = "default_golden_set")]
    pub golden_set: String,
    /// Absolute tolerance: an element matches when `|actual - expected| <= atol + rtol *
    /// |expected|` (numpy's `allclose`).
    #[serde(default = "default_atol")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("atol must be >= 0"))]
    pub atol: f64,
    /// Relative tolerance, see `atol`.
    #[serde(default = "default_rtol")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("rtol must be >= 0"))]
    pub rtol: f64,
    /// Fraction of golden samples whose decision (arg-max of the first output, or the policy
    /// label) must equal the reference, from 0 to 1.
    #[serde(default = "default_min_agreement")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("minAgreement must be between 0 and 1"))]
    pub min_agreement: f64,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            golden_set: default_golden_set(),
            atol: default_atol(),
            rtol: default_rtol(),
            min_agreement: default_min_agreement(),
        }
    }
}

/// What kinfer found out about the artifact.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// `sha256:<hex>` of the signed manifest of the artifact (every file's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Which trusted key signed it (the key's name in the ConfigMap/Secret, and its fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The trust the verification applied when a ModelTrustPolicy governs the namespace: the
    /// policies and the keys the artifact was verified against. Pods verify against these keys
    /// too; `None` when no policy selects the namespace (the spec's `signature` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<AppliedTrust>,
    /// Worst absolute and relative error and decision agreement on the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_result: Option<ValidationResult>,
    /// `Verified`, `Validated`, their summary `Ready`, and kstatus's `Reconciling` and `Stalled`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What a ModelTrustPolicy made of a ModelVersion's trust.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedTrust {
    /// The ModelTrustPolicies that select the namespace.
    #[schemars(length(max = 32))]
    pub policies: Vec<String>,
    /// The keys the artifact is verified against (the ModelVersion's own, each one allowed by
    /// every policy, or else the keys every policy trusts).
    #[schemars(length(max = 32))]
    pub public_keys: Vec<crate::trust_policy::PublicKey>,
}

/// Figures from a golden-set evaluation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResult {
    /// Number of golden samples evaluated.
    pub samples: u64,
    /// Largest absolute error over all outputs.
    pub max_abs_error: f64,
    /// Largest relative error over all outputs.
    pub max_rel_error: f64,
    /// Fraction of samples whose decision matched the reference.
    pub agreement: f64,
}

fn default_true() -> bool {
    true
}
fn default_bundle() -> String {
    "model.sig".into()
}
fn default_golden_set() -> String {
    "golden.npz".into()
}
fn default_atol() -> f64 {
    1e-5
}
fn default_rtol() -> f64 {
    1e-4
}
fn default_min_agreement() -> f64 {
    1.0
}
