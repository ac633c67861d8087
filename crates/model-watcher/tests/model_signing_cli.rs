//! Verification against bundles made by the real `model_signing` CLI (PyPI).
//!
//! The CLI is taken from the project venv: `$KINFER_VENV`, else `<workspace>/.venv` (made by
//! `scripts/setup-venv.sh`). Keys are generated with `openssl`. A missing venv or openssl fails
//! the tests; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use kinfer_watcher::signature::{SignatureError, TrustedKey, Verified, verify_dir};

fn venv() -> PathBuf {
    let venv = std::env::var_os("KINFER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // cargo's CARGO_MANIFEST_DIR at run time: a binary reused from another checkout
            // (a shared target dir) carries that checkout's path in env!().
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
                .join("../../.venv")
        });
    let cli = venv.join("bin/model_signing");
    assert!(
        cli.exists(),
        "the model_signing CLI is missing at {}: run scripts/setup-venv.sh \
         (or point KINFER_VENV at a venv with model-signing installed)",
        cli.display()
    );
    venv
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An EC key pair made by openssl: (private PEM path, public PEM path).
fn keypair(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run(Command::new("openssl")
        .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
        .arg(&private));
    run(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    (private, public)
}

/// A small model directory: model.onnx, golden.npz and a nested file.
fn model_dir(root: &Path, name: &str, seed: u8) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("meta")).unwrap();
    let onnx: Vec<u8> = (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(dir.join("model.onnx"), onnx).unwrap();
    let mut npz = b"PK\x03\x04golden".to_vec();
    npz.extend((0..300u32).map(|i| (i as u8) ^ seed));
    std::fs::write(dir.join("golden.npz"), npz).unwrap();
    std::fs::write(dir.join("meta/labels.txt"), format!("cat\ndog\n{seed}\n")).unwrap();
    dir
}

fn sign(dir: &Path, private: &Path, signature: &Path, extra: &[&str]) {
    let venv = venv();
    run(Command::new(venv.join("bin/model_signing"))
        .args(["sign", "key"])
        .arg(dir)
        .arg("--private_key")
        .arg(private)
        .arg("--signature")
        .arg(signature)
        .args(extra));
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    sig: PathBuf,
    public: PathBuf,
}

fn signed(curve: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (private, public) = keypair(&root, "signer", curve);
    let dir = model_dir(&root, "model", 7);
    let sig = dir.join("model.sig");
    sign(&dir, &private, &sig, &[]);
    Fixture {
        _tmp: tmp,
        root,
        dir,
        sig,
        public,
    }
}

fn key(path: &Path) -> TrustedKey {
    TrustedKey::from_file(path).unwrap()
}

fn verify(f: &Fixture) -> Result<Verified, SignatureError> {
    verify_dir(&f.dir, &f.sig, &[key(&f.public)])
}

fn bundle_hint(sig: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(sig).unwrap()).unwrap();
    v["verificationMaterial"]["publicKey"]["hint"]
        .as_str()
        .unwrap()
        .to_string()
}

fn assert_valid(f: &Fixture, curve: &str) {
    let v = verify(f).unwrap_or_else(|e| panic!("expected valid, got {}: {e}", e.reason()));
    assert_eq!(v.key_curve, curve);
    assert_eq!(v.key_fingerprint, bundle_hint(&f.sig));
    assert_eq!(v.key_fingerprint, key(&f.public).fingerprint());
    assert_eq!(v.manifest.model_name, "model");
    let mut names: Vec<_> = v
        .manifest
        .resources
        .iter()
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["golden.npz", "meta/labels.txt", "model.onnx"]);
}

#[test]
fn p256_signature_verifies() {
    let f = signed("prime256v1");
    assert_valid(&f, "P-256");
}

#[test]
fn p384_signature_verifies() {
    let f = signed("secp384r1");
    assert_valid(&f, "P-384");
}

#[test]
fn modified_model_byte_is_refused() {
    let f = signed("prime256v1");
    let path = f.dir.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    match verify(&f) {
        Err(SignatureError::DigestMismatch { file, .. }) => assert_eq!(file, "model.onnx"),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[test]
fn modified_bundle_payload_is_refused() {
    let f = signed("secp384r1");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f.sig).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    // Rename a signed resource: the statement stays self-consistent (same subject digest), only
    // the signature can catch it.
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace("\"golden.npz\"", "\"golden.npy\"");
    v["dsseEnvelope"]["payload"] = b64.encode(tampered).into();
    std::fs::write(&f.sig, serde_json::to_vec(&v).unwrap()).unwrap();
    match verify(&f) {
        Err(SignatureError::SignatureInvalid { .. }) => {}
        other => panic!("expected SignatureInvalid, got {other:?}"),
    }
}

#[test]
fn modified_signature_bytes_are_refused() {
    let f = signed("prime256v1");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f.sig).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut der = b64
        .decode(v["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    v["dsseEnvelope"]["signatures"][0]["sig"] = b64.encode(der).into();
    std::fs::write(&f.sig, serde_json::to_vec(&v).unwrap()).unwrap();
    match verify(&f) {
        Err(SignatureError::SignatureInvalid { .. }) => {}
        other => panic!("expected SignatureInvalid, got {other:?}"),
    }
}

#[test]
fn wrong_key_is_refused() {
    let f = signed("prime256v1");
    let (_, other) = keypair(&f.root, "other", "prime256v1");
    match verify_dir(&f.dir, &f.sig, &[key(&other)]) {
        Err(SignatureError::WrongKey { signer, trusted }) => {
            assert_eq!(signer, bundle_hint(&f.sig));
            assert_eq!(trusted, [format!("sha256:{}", key(&other).fingerprint())]);
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // With the right key among several trusted keys it verifies.
    assert!(verify_dir(&f.dir, &f.sig, &[key(&other), key(&f.public)]).is_ok());
}

#[test]
fn wrong_key_without_hint_fails_the_signature() {
    let f = signed("secp384r1");
    let (_, other) = keypair(&f.root, "other", "secp384r1");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f.sig).unwrap()).unwrap();
    v["verificationMaterial"]["publicKey"] = serde_json::json!({});
    std::fs::write(&f.sig, serde_json::to_vec(&v).unwrap()).unwrap();
    match verify_dir(&f.dir, &f.sig, &[key(&other)]) {
        Err(SignatureError::SignatureInvalid { .. }) => {}
        other => panic!("expected SignatureInvalid, got {other:?}"),
    }
    assert!(
        verify(&f).is_ok(),
        "the right key still verifies without a hint"
    );
}

#[test]
fn extra_file_is_refused() {
    let f = signed("prime256v1");
    std::fs::write(f.dir.join("meta/extra.bin"), b"not signed").unwrap();
    match verify(&f) {
        Err(SignatureError::ExtraFile { file }) => assert_eq!(file, "meta/extra.bin"),
        other => panic!("expected ExtraFile, got {other:?}"),
    }
}

#[test]
fn missing_file_is_refused() {
    let f = signed("prime256v1");
    std::fs::remove_file(f.dir.join("golden.npz")).unwrap();
    match verify(&f) {
        Err(SignatureError::MissingFile { file }) => assert_eq!(file, "golden.npz"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn bundle_from_another_model_is_refused() {
    let f = signed("prime256v1");
    // Another model with the same file names, signed by the same trusted key.
    let private = f.root.join("signer.key.pem");
    let other = model_dir(&f.root, "other-model", 99);
    let other_sig = f.root.join("other.sig");
    sign(&other, &private, &other_sig, &[]);
    match verify_dir(&f.dir, &other_sig, &[key(&f.public)]) {
        Err(SignatureError::OtherModel { model, .. }) => assert_eq!(model, "other-model"),
        other => panic!("expected OtherModel, got {other:?}"),
    }
    // And the other model's own bundle verifies for it.
    assert!(verify_dir(&other, &other_sig, &[key(&f.public)]).is_ok());
}

#[test]
fn recorded_ignore_paths_are_respected() {
    let tmp = tempfile::tempdir().unwrap();
    let (private, public) = keypair(tmp.path(), "k", "prime256v1");
    let dir = model_dir(tmp.path(), "model", 3);
    std::fs::write(dir.join("README.md"), b"notes").unwrap();
    // Signature stored outside the directory, under another name.
    let sig = tmp.path().join("bundle.json");
    // The CLI takes ignore paths relative to its working directory and records them relative
    // to the model directory.
    let readme = dir.join("README.md");
    sign(
        &dir,
        &private,
        &sig,
        &["--ignore-paths", readme.to_str().unwrap()],
    );
    std::fs::write(dir.join("README.md"), b"edited notes").unwrap();
    // Git paths are ignored by default by the CLI, and recorded as such.
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/HEAD"), b"ref: refs/heads/main").unwrap();
    let v = verify_dir(&dir, &sig, &[key(&public)]).unwrap();
    assert!(v.manifest.ignore_paths.iter().any(|p| p == "README.md"));
    assert!(v.manifest.resources.iter().all(|r| r.name != "README.md"));
}

fn cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kinfer-watcher"))
        .arg("verify")
        .args(args)
        .env_remove("KINFER_PUBLIC_KEYS")
        .env_remove("KINFER_SIGNATURE")
        .env_remove("KINFER_MODEL_DIR")
        .output()
        .unwrap()
}

#[test]
fn cli_verify_exit_codes() {
    let f = signed("secp384r1");
    let out = cli(&[
        "--dir".as_ref(),
        f.dir.as_os_str(),
        "--public-key".as_ref(),
        f.public.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("signer: sha256:{}", bundle_hint(&f.sig))),
        "{stdout}"
    );
    assert!(stdout.contains("manifest: sha256:"), "{stdout}");

    std::fs::write(f.dir.join("extra"), b"x").unwrap();
    let out = cli(&[
        "--dir".as_ref(),
        f.dir.as_os_str(),
        "--signature".as_ref(),
        "model.sig".as_ref(),
        "--public-key".as_ref(),
        f.public.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ExtraFile"), "{stderr}");
}
