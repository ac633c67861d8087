//! `ModelTrustPolicy` (`mtp`, cluster-scoped): which signing keys the ModelVersions of the
//! namespaces it selects may trust, and whether they may be served unsigned. Made by the cluster
//! administrator; a ModelVersion's author may narrow the trust it grants, never widen it.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The trust a cluster grants the ModelVersions of some namespaces. When several policies
/// select a namespace, all of them apply: a key is trusted only if every one of them lists it,
/// and unsigned artifacts are allowed only if every one of them allows them. Namespaces no
/// policy selects keep each ModelVersion's own `signature` settings.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kinfer.dev",
    version = "v1alpha1",
    kind = "ModelTrustPolicy",
    plural = "modeltrustpolicies",
    singular = "modeltrustpolicy",
    shortname = "mtp",
    category = "kinfer",
    doc = "Which signing keys the ModelVersions of the selected namespaces may trust.",
    printcolumn(
        name = "AllowUnsigned",
        type_ = "boolean",
        json_path = ".spec.allowUnsigned"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("(has(self.allowUnsigned) && self.allowUnsigned) || (has(self.publicKeys) && size(self.publicKeys) > 0)").message("a policy that requires signatures needs at least one public key"))]
#[serde(rename_all = "camelCase")]
pub struct ModelTrustPolicySpec {
    /// The namespaces this policy governs (their labels; `kubernetes.io/metadata.name` names
    /// one). Empty selects every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The public keys (PEM, ECDSA P-256 or P-384) a ModelVersion of these namespaces may
    /// trust. A ModelVersion that names `signature.trustedKeys` must name only keys from this
    /// list; one that names none is verified against all of them.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub public_keys: Vec<PublicKey>,
    /// Allow ModelVersions with `signature.required: false` (served without a signature, with a
    /// Warning Event). Default false.
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// One trusted public key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PublicKey {
    /// A name for the key, shown as the signer (`release`, `team-a-2026`).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')").message("name must be 1-63 characters of letters, digits, '.', '_' or '-'"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// The key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN PUBLIC KEY-----')").message("pem must be one PEM public key (-----BEGIN PUBLIC KEY-----)"))]
    #[schemars(length(max = 4096))]
    pub pem: String,
}
