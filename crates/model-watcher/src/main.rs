//! `kinfer-watcher`: the model-watcher sidecar binary.
//!
//! Fetching from S3, signature verification, the numerical gate and in-pod analysis are tracked
//! in issue 5. Today the binary parses its configuration and can list a version's artifact in S3
//! (`kinfer-watcher ls --source s3://bucket/prefix/ --endpoint URL`), which proves the S3 client
//! and credentials.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Args::parse().command {
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
