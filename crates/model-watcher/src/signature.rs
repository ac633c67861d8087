//! Offline verification of OpenSSF model-signing bundles.
//!
//! The `model_signing` tool (PyPI, v1.x) writes a [Sigstore bundle] v0.3 in JSON whose content is
//! a [DSSE] envelope. The envelope's payload (`application/vnd.in-toto+json`) is an in-toto
//! statement v1 with predicate type [`PREDICATE_TYPE`]:
//!
//! ```json
//! { "_type": "https://in-toto.io/Statement/v1",
//!   "subject": [{ "name": "<model dir name>", "digest": { "sha256": "<manifest digest>" } }],
//!   "predicateType": "https://model_signing/signature/v1.0",
//!   "predicate": {
//!     "resources": [{ "name": "model.onnx", "algorithm": "sha256", "digest": "<hex>" }, ...],
//!     "serialization": { "method": "files", "hash_type": "sha256", "allow_symlinks": false,
//!                        "ignore_paths": ["model.sig", ".git", ...] } } }
//! ```
//!
//! With key-based signing the bundle's verification material is a `publicKey.hint`: the
//! lowercase hex SHA-256 of the signer's public key as a SubjectPublicKeyInfo PEM (LF line
//! endings). The signature is ECDSA (DER) over the DSSE pre-authentication encoding ([`pae`]),
//! with SHA-256 for P-256 keys and SHA-384 for P-384 keys.
//!
//! [`verify_dir`] checks, in order: the bundle's shape, the signer against the trusted keys, the
//! signature, the statement, the subject (manifest) digest against the recorded resources, and
//! then the directory: every file not covered by the recorded ignore paths (and the signature file
//! itself) must be listed with the same SHA-256, and every listed file must exist. Files are
//! hashed streaming, in bounded memory.
//!
//! [Sigstore bundle]: https://github.com/sigstore/protobuf-specs
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement type `model_signing` writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a `model_signing` v1.0 signature.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// The signature file name `model_signing` uses by default.
pub const DEFAULT_SIGNATURE_FILE: &str = "model.sig";

/// Largest signature bundle read, in bytes: a manifest of ten thousand files is about 2 MiB, and
/// parsing 4 MiB of JSON stays well inside the watcher's 128 MiB.
pub const MAX_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;
/// Read buffer for streaming file hashing.
const HASH_BUFFER_BYTES: usize = 1024 * 1024;

/// Why an artifact was refused. [`SignatureError::reason`] gives a stable, greppable code.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is not a well-formed model-signing bundle.
    #[error("malformed signature bundle: {reason}")]
    MalformedBundle {
        /// What is wrong with it.
        reason: String,
    },
    /// The bundle is well formed but uses a feature kinfer does not verify.
    #[error("unsupported signature bundle: {reason}")]
    UnsupportedBundle {
        /// The unsupported feature.
        reason: String,
    },
    /// A configured public key cannot be used.
    #[error("unsupported public key {}: {reason}", path.display())]
    UnsupportedKey {
        /// Where the key came from.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// No trusted public key was configured.
    #[error("no trusted public key configured")]
    NoTrustedKeys,
    /// The bundle names a signer key that is none of the trusted keys.
    #[error(
        "wrong key: the bundle was signed by key sha256:{signer}, which is none of the trusted keys ({})",
        trusted.join(", ")
    )]
    WrongKey {
        /// The signer key fingerprint recorded in the bundle (hex SHA-256 of its PEM).
        signer: String,
        /// Fingerprints of the trusted keys.
        trusted: Vec<String>,
    },
    /// The DSSE signature does not verify with the trusted key(s).
    #[error("signature invalid: {reason}")]
    SignatureInvalid {
        /// Details.
        reason: String,
    },
    /// The signed subject digest does not match the signed resource list.
    #[error("subject digest {recorded} does not match the signed resources' digest {computed}")]
    SubjectDigestMismatch {
        /// The digest recorded in the statement's subject.
        recorded: String,
        /// The digest computed from the predicate's resources.
        computed: String,
    },
    /// None of the directory's files match the signed manifest: the bundle is another model's.
    #[error(
        "bundle is for another model: it signs {model:?} (manifest sha256:{manifest}) and no file in the directory matches it"
    )]
    OtherModel {
        /// The model name recorded in the bundle's subject.
        model: String,
        /// The bundle's manifest digest.
        manifest: String,
    },
    /// A file's content differs from the signed digest.
    #[error("digest mismatch for {file}: signed sha256:{expected}, found sha256:{actual}")]
    DigestMismatch {
        /// The file, relative to the model directory.
        file: String,
        /// The signed digest (hex).
        expected: String,
        /// The digest of the file on disk (hex).
        actual: String,
    },
    /// A file is present but not covered by the signature.
    #[error("extra file not covered by the signature: {file}")]
    ExtraFile {
        /// The file, relative to the model directory.
        file: String,
    },
    /// A signed file is absent.
    #[error("signed file missing: {file}")]
    MissingFile {
        /// The file, relative to the model directory.
        file: String,
    },
    /// A symbolic link was found but the signature does not allow them.
    #[error("symbolic link not allowed by the signature: {file}")]
    Symlink {
        /// The link, relative to the model directory.
        file: String,
    },
}

impl SignatureError {
    /// A short, stable code naming the kind of refusal (for Events, logs and exit messages).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "IoError",
            Self::MalformedBundle { .. } => "MalformedBundle",
            Self::UnsupportedBundle { .. } => "UnsupportedBundle",
            Self::UnsupportedKey { .. } => "UnsupportedKey",
            Self::NoTrustedKeys => "NoTrustedKeys",
            Self::WrongKey { .. } => "WrongKey",
            Self::SignatureInvalid { .. } => "SignatureInvalid",
            Self::SubjectDigestMismatch { .. } => "SubjectDigestMismatch",
            Self::OtherModel { .. } => "OtherModel",
            Self::DigestMismatch { .. } => "DigestMismatch",
            Self::ExtraFile { .. } => "ExtraFile",
            Self::MissingFile { .. } => "MissingFile",
            Self::Symlink { .. } => "Symlink",
        }
    }
}

fn malformed(reason: impl Into<String>) -> SignatureError {
    SignatureError::MalformedBundle {
        reason: reason.into(),
    }
}

#[derive(Clone, Debug)]
enum Curve {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// A trusted ECDSA public key (P-256 or P-384).
#[derive(Clone, Debug)]
pub struct TrustedKey {
    curve: Curve,
    fingerprint: String,
}

impl TrustedKey {
    /// Parses a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) holding a P-256 or P-384
    /// key. `origin` names the key in errors.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, SignatureError> {
        let unsupported = |reason: String| SignatureError::UnsupportedKey {
            path: origin.to_path_buf(),
            reason,
        };
        if let Ok(key) = p256::PublicKey::from_public_key_pem(pem) {
            let canonical = key
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| unsupported(e.to_string()))?;
            return Ok(Self {
                curve: Curve::P256(key.into()),
                fingerprint: hex(&Sha256::digest(canonical.as_bytes())),
            });
        }
        if let Ok(key) = p384::PublicKey::from_public_key_pem(pem) {
            let canonical = key
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| unsupported(e.to_string()))?;
            return Ok(Self {
                curve: Curve::P384(key.into()),
                fingerprint: hex(&Sha256::digest(canonical.as_bytes())),
            });
        }
        Err(unsupported(
            "not a P-256 or P-384 SubjectPublicKeyInfo PEM public key (-----BEGIN PUBLIC KEY-----)"
                .into(),
        ))
    }

    /// Reads and parses a PEM public key file.
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let pem = std::fs::read_to_string(path).map_err(|source| SignatureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem, path)
    }

    /// The key's fingerprint as `model_signing` records it in the bundle's `publicKey.hint`:
    /// lowercase hex SHA-256 of the SubjectPublicKeyInfo PEM with LF line endings.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The curve name, `P-256` or `P-384`.
    pub fn curve_name(&self) -> &'static str {
        match self.curve {
            Curve::P256(_) => "P-256",
            Curve::P384(_) => "P-384",
        }
    }

    /// Verifies a DER-encoded ECDSA signature over `message` (SHA-256 for P-256, SHA-384 for
    /// P-384).
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), String> {
        use p256::ecdsa::signature::Verifier as _;
        match &self.curve {
            Curve::P256(key) => {
                let sig = p256::ecdsa::Signature::from_der(der_signature)
                    .map_err(|e| format!("not a DER P-256 ECDSA signature: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|_| "ECDSA P-256 verification failed".to_string())
            }
            Curve::P384(key) => {
                let sig = p384::ecdsa::Signature::from_der(der_signature)
                    .map_err(|e| format!("not a DER P-384 ECDSA signature: {e}"))?;
                key.verify(message, &sig)
                    .map_err(|_| "ECDSA P-384 verification failed".to_string())
            }
        }
    }
}

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Lowercase hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The manifest (subject) digest as `model_signing` defines it: SHA-256 over the concatenated
/// raw digest bytes of the resources, in the order they are listed in the predicate.
pub fn manifest_digest<'a>(resource_digests: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in resource_digests {
        h.update(d);
    }
    h.finalize().into()
}

/// SHA-256 of a file, read streaming with a fixed buffer.
pub fn hash_file(path: &Path) -> Result<[u8; 32], SignatureError> {
    let io = |source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Whether `rel` (a `/`-separated path relative to the model directory) is covered by one of
/// the ignore paths: equal to it or below it, compared component by component.
pub fn is_ignored(rel: &str, ignore_paths: &[Vec<String>]) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    ignore_paths.iter().any(|ig| {
        !ig.is_empty() && parts.len() >= ig.len() && parts.iter().zip(ig).all(|(a, b)| a == b)
    })
}

/// Splits a recorded ignore path into normal components; `None` for absolute paths or paths
/// with `..`, which cannot name anything inside the model directory.
fn ignore_components(p: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A signed resource: one file and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Path relative to the model directory, `/`-separated.
    pub name: String,
    /// Raw SHA-256 digest.
    pub digest: Vec<u8>,
}

/// The content of a verified statement.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The model name recorded as the subject (the signed directory's name).
    pub model_name: String,
    /// The subject digest, hex.
    pub digest: String,
    /// The signed files.
    pub resources: Vec<Resource>,
    /// Recorded ignore paths, as written.
    pub ignore_paths: Vec<String>,
    /// Whether symbolic links were allowed when signing.
    pub allow_symlinks: bool,
}

/// The result of a successful verification.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Fingerprint of the key that signed (see [`TrustedKey::fingerprint`]).
    pub key_fingerprint: String,
    /// Curve of that key.
    pub key_curve: &'static str,
    /// The verified manifest.
    pub manifest: Manifest,
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let cfg = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg).decode(s))
        .ok()
}

fn get_str<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a str, SignatureError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("{ctx}: missing string field {key:?}")))
}

/// Verifies the DSSE envelope of a parsed bundle with the trusted keys and returns the signed
/// payload and the fingerprint of the key that verified it.
pub fn verify_envelope(
    bundle: &Value,
    keys: &[TrustedKey],
) -> Result<(Vec<u8>, &'static str, String), SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    let media = get_str(bundle, "mediaType", "bundle")?;
    if !(media == "application/vnd.dev.sigstore.bundle.v0.3+json"
        || media == "application/vnd.dev.sigstore.bundle+json;version=0.3")
    {
        return Err(SignatureError::UnsupportedBundle {
            reason: format!("media type {media:?} (expected a Sigstore bundle v0.3)"),
        });
    }
    let material = bundle
        .get("verificationMaterial")
        .ok_or_else(|| malformed("missing verificationMaterial"))?;
    let hint = match material.get("publicKey") {
        Some(pk) => pk
            .get("hint")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty()),
        None => {
            let kind = ["certificate", "x509CertificateChain"]
                .into_iter()
                .find(|k| material.get(k).is_some());
            return Err(match kind {
                Some(k) => SignatureError::UnsupportedBundle {
                    reason: format!(
                        "verification material is a {k}; only key-based bundles \
                         (model_signing sign key) are verified"
                    ),
                },
                None => malformed("verificationMaterial has no publicKey"),
            });
        }
    };
    let candidates: Vec<&TrustedKey> = match hint {
        Some(h) => {
            let h = h.to_ascii_lowercase();
            let found: Vec<_> = keys.iter().filter(|k| k.fingerprint == h).collect();
            if found.is_empty() {
                return Err(SignatureError::WrongKey {
                    signer: h,
                    trusted: keys
                        .iter()
                        .map(|k| format!("sha256:{}", k.fingerprint))
                        .collect(),
                });
            }
            found
        }
        None => keys.iter().collect(),
    };
    let env = bundle.get("dsseEnvelope").ok_or_else(|| {
        if bundle.get("messageSignature").is_some() {
            SignatureError::UnsupportedBundle {
                reason: "bundle holds a messageSignature, not a DSSE envelope".into(),
            }
        } else {
            malformed("missing dsseEnvelope")
        }
    })?;
    let payload_type = get_str(env, "payloadType", "dsseEnvelope")?;
    if payload_type != PAYLOAD_TYPE {
        return Err(malformed(format!(
            "payloadType {payload_type:?}, expected {PAYLOAD_TYPE:?}"
        )));
    }
    let payload = b64_decode(get_str(env, "payload", "dsseEnvelope")?)
        .ok_or_else(|| malformed("dsseEnvelope.payload is not base64"))?;
    let sigs = env
        .get("signatures")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("dsseEnvelope has no signatures"))?;
    let message = pae(payload_type, &payload);
    let mut last_err = String::new();
    for sig in sigs {
        let der = b64_decode(get_str(sig, "sig", "dsseEnvelope.signatures[]")?)
            .ok_or_else(|| malformed("signature is not base64"))?;
        for key in &candidates {
            match key.verify(&message, &der) {
                Ok(()) => return Ok((payload, key.curve_name(), key.fingerprint.clone())),
                Err(e) => last_err = e,
            }
        }
    }
    Err(SignatureError::SignatureInvalid { reason: last_err })
}

/// Parses a verified in-toto statement into a [`Manifest`], checking its types, its
/// serialization (files, sha256) and that the subject digest matches the resources.
pub fn parse_statement(payload: &[u8]) -> Result<Manifest, SignatureError> {
    let st: Value = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("payload is not JSON: {e}")))?;
    let ty = get_str(&st, "_type", "statement")?;
    if ty != STATEMENT_TYPE {
        return Err(malformed(format!(
            "statement _type {ty:?}, expected {STATEMENT_TYPE:?}"
        )));
    }
    let pt = get_str(&st, "predicateType", "statement")?;
    if pt != PREDICATE_TYPE {
        return Err(SignatureError::UnsupportedBundle {
            reason: format!("predicateType {pt:?}, expected {PREDICATE_TYPE:?}"),
        });
    }
    let subjects = st
        .get("subject")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("statement has no subject"))?;
    let [subject] = subjects.as_slice() else {
        return Err(malformed(format!(
            "expected one subject, got {}",
            subjects.len()
        )));
    };
    let model_name = get_str(subject, "name", "subject")?.to_string();
    let recorded = subject
        .get("digest")
        .and_then(|d| d.get("sha256"))
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("subject has no sha256 digest"))?
        .to_ascii_lowercase();
    let pred = st
        .get("predicate")
        .ok_or_else(|| malformed("statement has no predicate"))?;
    let ser = pred
        .get("serialization")
        .ok_or_else(|| malformed("predicate has no serialization"))?;
    let method = get_str(ser, "method", "serialization")?;
    if method != "files" {
        return Err(SignatureError::UnsupportedBundle {
            reason: format!("serialization method {method:?} (only \"files\" is verified)"),
        });
    }
    let hash_type = get_str(ser, "hash_type", "serialization")?;
    if hash_type != "sha256" {
        return Err(SignatureError::UnsupportedBundle {
            reason: format!("hash_type {hash_type:?} (only sha256 is verified)"),
        });
    }
    let allow_symlinks = ser
        .get("allow_symlinks")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ignore_paths = match ser.get("ignore_paths") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("ignore_paths must be strings"))?,
        Some(_) => return Err(malformed("ignore_paths is not a list")),
    };
    let list = pred
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("predicate has no resources list"))?;
    let mut resources = Vec::with_capacity(list.len());
    let mut seen = BTreeSet::new();
    for r in list {
        let name = get_str(r, "name", "resource")?.to_string();
        let alg = get_str(r, "algorithm", "resource")?;
        if alg != "sha256" {
            return Err(SignatureError::UnsupportedBundle {
                reason: format!("resource {name}: algorithm {alg:?} (only sha256 is verified)"),
            });
        }
        let digest = unhex(get_str(r, "digest", "resource")?)
            .filter(|d| d.len() == 32)
            .ok_or_else(|| malformed(format!("resource {name}: digest is not 32-byte hex")))?;
        if !seen.insert(name.clone()) {
            return Err(malformed(format!("resource {name} listed twice")));
        }
        resources.push(Resource { name, digest });
    }
    let computed = hex(&manifest_digest(
        resources.iter().map(|r| r.digest.as_slice()),
    ));
    if computed != recorded {
        return Err(SignatureError::SubjectDigestMismatch { recorded, computed });
    }
    Ok(Manifest {
        model_name,
        digest: recorded,
        resources,
        ignore_paths,
        allow_symlinks,
    })
}

/// Reads and parses a bundle file (bounded size).
pub fn read_bundle(path: &Path) -> Result<Value, SignatureError> {
    let io = |source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(malformed(format!(
            "bundle larger than {MAX_BUNDLE_BYTES} bytes"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| malformed(format!("not JSON: {e}")))
}

/// Lists the regular files under `dir` as `/`-separated relative paths, skipping ignored paths.
/// Symbolic links are refused unless `allow_symlinks`; allowed links to files are listed, links
/// to directories are not followed.
fn list_files(
    dir: &Path,
    ignore: &[Vec<String>],
    allow_symlinks: bool,
) -> Result<BTreeMap<String, PathBuf>, SignatureError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let io = |source| SignatureError::Io {
            path: path.clone(),
            source,
        };
        for entry in std::fs::read_dir(&path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| SignatureError::ExtraFile {
                file: format!("{rel}{}", name.to_string_lossy()),
            })?;
            let child_rel = format!("{rel}{name}");
            if is_ignored(&child_rel, ignore) {
                continue;
            }
            let child = entry.path();
            let ft = entry.file_type().map_err(|source| SignatureError::Io {
                path: child.clone(),
                source,
            })?;
            if ft.is_symlink() {
                if !allow_symlinks {
                    return Err(SignatureError::Symlink { file: child_rel });
                }
                if std::fs::metadata(&child)
                    .map(|m| m.is_file())
                    .unwrap_or(false)
                {
                    out.insert(child_rel, child);
                }
            } else if ft.is_dir() {
                stack.push((child, format!("{child_rel}/")));
            } else if ft.is_file() {
                out.insert(child_rel, child);
            }
        }
    }
    Ok(out)
}

/// Verifies the model directory `dir` against the bundle at `signature` with the trusted keys.
///
/// The signature file is ignored when it lies inside `dir`, in addition to the ignore paths the
/// bundle records.
pub fn verify_dir(
    dir: &Path,
    signature: &Path,
    keys: &[TrustedKey],
) -> Result<Verified, SignatureError> {
    let bundle = read_bundle(signature)?;
    let (payload, key_curve, key_fingerprint) = verify_envelope(&bundle, keys)?;
    let manifest = parse_statement(&payload)?;

    let mut ignore: Vec<Vec<String>> = manifest
        .ignore_paths
        .iter()
        .filter_map(|p| ignore_components(p))
        .collect();
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| SignatureError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let dir_c = canon(dir)?;
    if let Ok(rel) = canon(signature)?.strip_prefix(&dir_c)
        && let Some(parts) = rel.to_str().and_then(ignore_components)
    {
        ignore.push(parts);
    }

    let on_disk = list_files(&dir_c, &ignore, manifest.allow_symlinks)?;
    let signed: BTreeMap<&str, &[u8]> = manifest
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.digest.as_slice()))
        .collect();

    let mut mismatch = None;
    let mut matched = 0usize;
    for (name, expected) in &signed {
        if let Some(path) = on_disk.get(*name) {
            let actual = hash_file(path)?;
            if actual.as_slice() == *expected {
                matched += 1;
            } else if mismatch.is_none() {
                mismatch = Some(SignatureError::DigestMismatch {
                    file: name.to_string(),
                    expected: hex(expected),
                    actual: hex(&actual),
                });
            }
        }
    }
    if matched == 0 && !signed.is_empty() {
        return Err(SignatureError::OtherModel {
            model: manifest.model_name,
            manifest: manifest.digest,
        });
    }
    if let Some(name) = signed.keys().find(|n| !on_disk.contains_key(**n)) {
        return Err(SignatureError::MissingFile {
            file: name.to_string(),
        });
    }
    if let Some(name) = on_disk.keys().find(|n| !signed.contains_key(n.as_str())) {
        return Err(SignatureError::ExtraFile { file: name.clone() });
    }
    if let Some(e) = mismatch {
        return Err(e);
    }
    Ok(Verified {
        key_fingerprint,
        key_curve,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_over_the_cap_is_refused_unparsed() {
        let dir = std::env::temp_dir().join(format!("kinfer-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("model.sig");
        // Valid JSON, one byte over the cap: refused by size, not by content.
        let mut text = String::from("\"");
        text.push_str(&"a".repeat(MAX_BUNDLE_BYTES as usize - 1));
        text.push('"');
        std::fs::write(&big, &text).unwrap();
        let e = read_bundle(&big).unwrap_err();
        assert_eq!(e.reason(), "MalformedBundle");
        assert!(e.to_string().contains("larger than 4194304 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pae_matches_dsse_spec_example() {
        // From the DSSE v1.0 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn pae_counts_bytes_not_chars() {
        let body = "é".as_bytes();
        assert_eq!(
            pae(PAYLOAD_TYPE, body)[..11].to_vec(),
            b"DSSEv1 28 a".to_vec()
        );
        assert!(pae(PAYLOAD_TYPE, body).ends_with(b" 2 \xc3\xa9"));
    }

    #[test]
    fn manifest_digest_is_sha256_of_concatenated_raw_digests() {
        let a = Sha256::digest(b"a");
        let b = Sha256::digest(b"b");
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(
            manifest_digest([a.as_slice(), b.as_slice()]),
            <[u8; 32]>::from(Sha256::digest(&cat))
        );
        // Order matters.
        assert_ne!(
            manifest_digest([a.as_slice(), b.as_slice()]),
            manifest_digest([b.as_slice(), a.as_slice()])
        );
        assert_eq!(
            hex(&manifest_digest([])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hash_file_streams_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..(3 * HASH_BUFFER_BYTES + 17)).map(|i| i as u8).collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            <[u8; 32]>::from(Sha256::digest(&data))
        );
    }

    #[test]
    fn ignore_paths_match_whole_components() {
        let ig: Vec<Vec<String>> = ["model.sig", ".git", "a/b"]
            .iter()
            .filter_map(|p| ignore_components(p))
            .collect();
        assert!(is_ignored("model.sig", &ig));
        assert!(is_ignored(".git/HEAD", &ig));
        assert!(is_ignored("a/b/c", &ig));
        assert!(is_ignored("a/b", &ig));
        assert!(!is_ignored("a/bc", &ig));
        assert!(!is_ignored("model.sig2", &ig));
        assert!(!is_ignored("x/model.sig", &ig));
        assert!(ignore_components("/abs").is_none());
        assert!(ignore_components("../up").is_none());
        assert_eq!(ignore_components("./x").unwrap(), vec!["x".to_string()]);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff").unwrap(), vec![0, 0xab, 0xff]);
        assert!(unhex("0").is_none());
        assert!(unhex("zz").is_none());
    }

    fn statement(resources: &[(&str, &[u8])], subject: Option<String>) -> Vec<u8> {
        let res: Vec<Value> = resources
            .iter()
            .map(|(n, c)| {
                serde_json::json!({"name": n, "algorithm": "sha256",
                                   "digest": hex(&Sha256::digest(c))})
            })
            .collect();
        let digests: Vec<[u8; 32]> = resources
            .iter()
            .map(|(_, c)| Sha256::digest(c).into())
            .collect();
        let root = subject.unwrap_or_else(|| hex(&manifest_digest(digests.iter().map(|d| &d[..]))));
        serde_json::to_vec(&serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "m", "digest": {"sha256": root}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"resources": res, "serialization": {
                "method": "files", "hash_type": "sha256", "allow_symlinks": false,
                "ignore_paths": ["model.sig"]}}
        }))
        .unwrap()
    }

    #[test]
    fn statement_subject_digest_is_checked() {
        let ok = statement(&[("a", b"1"), ("b/c", b"2")], None);
        let m = parse_statement(&ok).unwrap();
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.ignore_paths, vec!["model.sig".to_string()]);
        let bad = statement(&[("a", b"1")], Some("00".repeat(32)));
        assert!(matches!(
            parse_statement(&bad),
            Err(SignatureError::SubjectDigestMismatch { .. })
        ));
    }

    #[test]
    fn non_files_serialization_is_unsupported() {
        let mut v: Value = serde_json::from_slice(&statement(&[("a", b"1")], None)).unwrap();
        v["predicate"]["serialization"]["method"] = "shards".into();
        let e = parse_statement(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.reason(), "UnsupportedBundle");
    }
}
