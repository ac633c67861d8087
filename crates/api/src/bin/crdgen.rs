//! `crdgen`: writes the CustomResourceDefinitions of kinfer to `crds/` (or the directory given as
//! the first argument). `make crds` runs it; a test fails when the committed files differ.

use std::{fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("crds"));
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for crd in kinfer_api::crds() {
        let path = dir.join(kinfer_api::crd_file_name(&crd));
        let yaml = match kinfer_api::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {}: {e}", crd.spec.names.kind);
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
