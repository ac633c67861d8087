//! `kinfer-watcher`: the model-watcher sidecar binary.
//!
//! Fetching from S3, signature verification, the numerical gate and in-pod analysis are tracked
//! in issue 5. Today the binary parses its configuration, can list a version's artifact in S3
//! (`kinfer-watcher ls --source s3://bucket/prefix/ --endpoint URL`), which proves the S3 client
//! and credentials, and verifies a downloaded artifact offline against its OpenSSF model-signing
//! bundle (`kinfer-watcher verify --dir DIR --public-key KEY.pem`, see docs/signing.md).

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
    /// List the objects of an artifact prefix in S3.
    Ls {
        /// `s3://bucket/prefix/`
        #[arg(long, env = "KINFER_SOURCE")]
        source: String,
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
        Command::Ls {
            source,
            endpoint,
            region,
        } => {
            let rest = source.strip_prefix("s3://").ok_or_else(|| {
                anyhow::anyhow!("--source {source:?} must start with s3:// (s3://bucket/prefix/)")
            })?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region));
            if let Some(ep) = &endpoint {
                loader = loader.endpoint_url(ep);
            }
            let conf = aws_sdk_s3::config::Builder::from(&loader.load().await)
                .force_path_style(endpoint.is_some())
                .build();
            let s3 = aws_sdk_s3::Client::from_conf(conf);
            let out = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot list {source}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                })?;
            for o in out.contents() {
                println!("{}\t{}", o.size().unwrap_or(0), o.key().unwrap_or(""));
            }
        }
    }
    Ok(())
}
