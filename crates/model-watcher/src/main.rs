//! `kinfer-watcher`: the model-watcher sidecar binary.
//!
//! Today it fetches a version's artifact from S3 atomically into a content-addressed directory
//! (`kinfer-watcher fetch --source s3://bucket/prefix/ --endpoint URL --dest DIR`) and verifies
//! a downloaded artifact offline against its OpenSSF model-signing bundle (`kinfer-watcher verify --dir DIR --public-key KEY.pem`, see docs/signing.md).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The kinfer model-watcher.
#[derive(Parser, Debug)]
#[command(name = "kinfer-watcher", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download a version's artifact from S3 into DEST/sha256-<digest>/ (atomic, cached by digest).
    Fetch {
        /// `s3://bucket/prefix/`
        #[arg(long, env = "KINFER_SOURCE")]
        source: String,
        /// Directory on the shared volume that holds fetched artifacts.
        #[arg(long, env = "KINFER_MODELS_DIR", default_value = "/models")]
        dest: std::path::PathBuf,
        /// S3-compatible endpoint URL; AWS when empty.
        #[arg(long, env = "KINFER_S3_ENDPOINT")]
        endpoint: Option<String>,
        /// Region for request signing.
        #[arg(long, env = "KINFER_S3_REGION", default_value = "us-east-1")]
        region: String,
    },
    /// Verify a model directory offline against its model-signing bundle.
    ///
    /// Exit 0 and print the signer key fingerprint and the manifest digest when the signature
    /// and every file digest hold; exit 1 with the reason otherwise.
    Verify {
        /// The model directory.
        #[arg(long, env = "KINFER_MODEL_DIR")]
        dir: PathBuf,
        /// The signature bundle; default DIR/model.sig. A relative path that does not exist
        /// from the working directory is looked up inside DIR.
        #[arg(long, env = "KINFER_SIGNATURE")]
        signature: Option<PathBuf>,
        /// A trusted public key (SubjectPublicKeyInfo PEM, P-256 or P-384); repeatable.
        #[arg(
            long = "public-key",
            env = "KINFER_PUBLIC_KEYS",
            value_delimiter = ',',
            required = true
        )]
        public_keys: Vec<PathBuf>,
    },
}

/// Runs `verify`: prints the result and returns the exit code.
fn verify(dir: PathBuf, signature: Option<PathBuf>, public_keys: Vec<PathBuf>) -> i32 {
    use kinfer_watcher::signature::{DEFAULT_SIGNATURE_FILE, TrustedKey, verify_dir};
    let signature = match signature {
        None => dir.join(DEFAULT_SIGNATURE_FILE),
        Some(p) if p.is_relative() && !p.exists() && dir.join(&p).exists() => dir.join(p),
        Some(p) => p,
    };
    let result = public_keys
        .iter()
        .map(|p| TrustedKey::from_file(p))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|keys| verify_dir(&dir, &signature, &keys));
    match result {
        Ok(v) => {
            println!("verified: {}", dir.display());
            println!("model: {}", v.manifest.model_name);
            println!("files: {}", v.manifest.resources.len());
            println!("signer: sha256:{} ({})", v.key_fingerprint, v.key_curve);
            println!("manifest: sha256:{}", v.manifest.digest);
            0
        }
        Err(e) => {
            eprintln!(
                "kinfer-watcher: verification of {} failed: {}: {e}",
                dir.display(),
                e.reason()
            );
            1
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Args::parse().command {
        Command::Verify {
            dir,
            signature,
            public_keys,
        } => std::process::exit(verify(dir, signature, public_keys)),
        Command::Fetch {
            source,
            dest,
            endpoint,
            region,
        } => {
            let uri: kinfer_watcher::fetch::S3Uri = source.parse()?;
            let client = kinfer_watcher::fetch::client(endpoint.as_deref(), &region, None).await;
            let f = kinfer_watcher::fetch::fetch(&client, &uri, &dest, Default::default()).await?;
            println!(
                "{}\t{}\t{} bytes{}",
                f.digest,
                f.dir.display(),
                f.bytes,
                if f.cached { " (cached)" } else { "" }
            );
        }
    }
    Ok(())
}
