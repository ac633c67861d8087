//! What the runtime's integration tests share: a small MLP made by the `onnx` Python package
//! (the venv that `make test-rust` puts on PATH), ONNX Runtime from `ORT_DYLIB_PATH`, and the
//! options of an unbatched version with one session.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use kinfer_runtime::{
    batching::BatchOptions,
    models::{
        session::{SessionOptions, init_ort},
        version::{BatchRounding, LoadOptions, LoadedVersion},
    },
};

/// A fresh directory for one test binary's files.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kinfer-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the runtime tier's MLP (4 features -> 3 probabilities, input `x`, output `probs`).
pub fn model(dir: &Path) -> PathBuf {
    let path = dir.join("mlp.onnx");
    // The crate's directory as cargo gives it when running the test (a binary cargo reused from
    // another checkout of the same workspace carries that checkout's path in env!()).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let runtime_tier = manifest_dir.join("../../tests/runtime");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); import models; models.mlp(sys.argv[2], seed=0)")
        .arg(&runtime_tier)
        .arg(&path)
        .output()
        .expect("python3 (the project's venv: make test-rust puts it on PATH)");
    assert!(
        out.status.success(),
        "making the model failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Loads ONNX Runtime from `ORT_DYLIB_PATH`.
pub fn init_ort_from_env() {
    let lib = std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (make test-rust sets it)");
    init_ort(Some(Path::new(&lib))).unwrap();
}

/// An unbatched version with one session (it runs on the request's thread).
pub fn unbatched() -> LoadOptions {
    LoadOptions {
        session: SessionOptions::cpu(1),
        batching: BatchOptions {
            max_batch: 1,
            max_delay: Duration::ZERO,
            queue_capacity: 64,
        },
        instances: 1,
        max_request_rows: 64,
        warmup_runs: 3,
        batch_rounding: BatchRounding::Exact,
        pinning: None,
    }
}

/// The small MLP (at the returned path) loaded unbatched in a fresh directory for `test`
/// (removed by the caller), with ONNX Runtime initialised; it runs on the request's thread.
pub fn inline_version(test: &str) -> (PathBuf, PathBuf, Arc<LoadedVersion>) {
    let dir = temp_dir(test);
    let path = model(&dir);
    init_ort_from_env();
    let v = LoadedVersion::load("m", "1", &path, None, &unbatched()).unwrap();
    assert!(
        v.runs_inline(),
        "an unbatched small model runs on the request's thread"
    );
    (dir, path, v)
}
