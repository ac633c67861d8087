//! Fetching a model version's artifact from any S3-compatible store into the shared volume.
//!
//! Every object under the version's prefix is streamed into a private temporary directory
//! (`.partial-*`) with bounded memory, each file fsynced; a download cut off mid-file resumes
//! with a ranged GET; failed requests are retried with exponential backoff and jitter. Only when
//! every file is complete is the directory renamed — atomically — to `sha256-<digest>`, where the
//! digest covers every file's name and content. So a reader sees a complete artifact or none, a
//! killed process leaves only a `.partial-*` directory that the next run deletes, and an artifact
//! already present (same digest) is not written twice. [`gc`] removes versions no longer needed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aws_sdk_s3::Client;
use kinfer_contract::backoff::Backoff;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source URI is not `s3://bucket/prefix/`.
    #[error("source {0:?} is not an s3://bucket/prefix/ URI")]
    BadUri(String),
    /// S3 refused or failed a request (after retries).
    #[error("S3 {op} {target} failed after {attempts} attempt(s): {reason}")]
    S3 {
        /// ListObjectsV2 or GetObject.
        op: &'static str,
        /// Bucket/key.
        target: String,
        /// Attempts made.
        attempts: u32,
        /// What the store said (credentials, missing bucket, connection).
        reason: String,
    },
    /// The prefix holds no objects.
    #[error("s3://{bucket}/{prefix} holds no objects: check the ModelVersion's source.uri")]
    Empty {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
    },
    /// An object key would escape the artifact directory.
    #[error("object key {0:?} is not a safe relative path")]
    UnsafeKey(String),
    /// Local disk I/O failed (disk full, permissions).
    #[error("writing {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The artifact is larger than the caller allows (nothing was downloaded).
    #[error(
        "the artifact is {total} bytes, more than the {limit} bytes one artifact may use (a third of the models volume, resources.modelStorage)"
    )]
    TooLarge {
        /// The listed size of all its objects.
        total: u64,
        /// The limit.
        limit: u64,
    },
    /// The object changed size while downloading.
    #[error("object {key} is {got} bytes, S3 listed {want}: it changed during the download; retry")]
    SizeMismatch {
        /// Key.
        key: String,
        /// Bytes received.
        got: u64,
        /// Listed size.
        want: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `s3://bucket/prefix/` split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, always ending in `/` when not empty.
    pub prefix: String,
}

impl std::str::FromStr for S3Uri {
    type Err = FetchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| FetchError::BadUri(s.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(FetchError::BadUri(s.into()));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            bucket: bucket.into(),
            prefix,
        })
    }
}

/// Retry policy of one S3 request: `attempts` tries, with jittered [`Backoff`] between them.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Total attempts per request.
    pub attempts: u32,
    /// Waits between attempts.
    pub backoff: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// A fetched artifact.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `root/sha256-<digest>`.
    pub dir: PathBuf,
    /// `sha256:<hex>` over every file's relative name and content digest.
    pub digest: String,
    /// Whether it was already present (nothing downloaded).
    pub cached: bool,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Downloads `uri` into `root` (see the module docs). `root` must be on one filesystem.
pub async fn fetch(
    client: &Client,
    uri: &S3Uri,
    root: &Path,
    retry: Retry,
) -> Result<Fetched, FetchError> {
    fetch_at_most(client, uri, root, retry, None).await
}

/// [`fetch`], refusing before any download an artifact whose listed objects add up to more
/// than `max_bytes`.
pub async fn fetch_at_most(
    client: &Client,
    uri: &S3Uri,
    root: &Path,
    retry: Retry,
    max_bytes: Option<u64>,
) -> Result<Fetched, FetchError> {
    tokio::fs::create_dir_all(root).await.map_err(io(root))?;
    remove_partials(root).await?;
    let objects = list(client, uri, retry).await?;
    let total = objects
        .iter()
        .fold(0u64, |sum, (_, _, size)| sum.saturating_add(*size));
    if let Some(limit) = max_bytes
        && total > limit
    {
        return Err(FetchError::TooLarge { total, limit });
    }
    let tmp = root.join(format!(".partial-{}-{}", std::process::id(), nanos()));
    tokio::fs::create_dir(&tmp).await.map_err(io(&tmp))?;
    let result = download_all(client, uri, &objects, &tmp, retry).await;
    let (digest, bytes) = match result {
        Ok(v) => v,
        Err(e) => {
            // Nothing half-written stays behind (disk full, S3 gone).
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(e);
        }
    };
    let dir = root.join(format!("sha256-{digest}"));
    if tokio::fs::try_exists(&dir).await.map_err(io(&dir))? {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Ok(Fetched {
            dir,
            digest: format!("sha256:{digest}"),
            cached: true,
            bytes,
        });
    }
    tokio::fs::rename(&tmp, &dir).await.map_err(io(&dir))?;
    fsync_dir(root).await?;
    Ok(Fetched {
        dir,
        digest: format!("sha256:{digest}"),
        cached: false,
        bytes,
    })
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

async fn remove_partials(root: &Path) -> Result<(), FetchError> {
    let mut rd = tokio::fs::read_dir(root).await.map_err(io(root))?;
    while let Some(e) = rd.next_entry().await.map_err(io(root))? {
        if e.file_name().to_string_lossy().starts_with(".partial-") {
            tracing::info!(path = %e.path().display(), "removing an incomplete download");
            let _ = tokio::fs::remove_dir_all(e.path()).await;
        }
    }
    Ok(())
}

async fn fsync_dir(dir: &Path) -> Result<(), FetchError> {
    let f = tokio::fs::File::open(dir).await.map_err(io(dir))?;
    f.sync_all().await.map_err(io(dir))
}

/// (relative name, key, size) of every object under the prefix, sorted by name.
async fn list(
    client: &Client,
    uri: &S3Uri,
    retry: Retry,
) -> Result<Vec<(String, String, u64)>, FetchError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            let r = client
                .list_objects_v2()
                .bucket(&uri.bucket)
                .prefix(&uri.prefix)
                .set_continuation_token(token.clone())
                .send()
                .await;
            match r {
                Ok(p) => break p,
                Err(e) if attempt < retry.attempts && retryable(&e) => {
                    tokio::time::sleep(retry.backoff.jittered(attempt, nanos() as u64)).await;
                }
                Err(e) => {
                    return Err(FetchError::S3 {
                        op: "ListObjectsV2",
                        target: format!("s3://{}/{}", uri.bucket, uri.prefix),
                        attempts: attempt,
                        reason: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                    });
                }
            }
        };
        for o in page.contents() {
            let key = o.key().unwrap_or_default().to_owned();
            let name = key.strip_prefix(&uri.prefix).unwrap_or(&key).to_owned();
            if name.is_empty() || name.ends_with('/') {
                continue; // "directory" placeholder objects
            }
            if name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(".partial-"))
            {
                return Err(FetchError::UnsafeKey(key));
            }
            out.push((name, key, o.size().unwrap_or(0).max(0) as u64));
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => break,
        }
    }
    if out.is_empty() {
        return Err(FetchError::Empty {
            bucket: uri.bucket.clone(),
            prefix: uri.prefix.clone(),
        });
    }
    out.sort();
    Ok(out)
}

/// Whether an SDK error is worth retrying: connection problems, timeouts, 5xx, throttling —
/// not credentials or a missing bucket.
fn retryable<E: std::fmt::Debug, R: std::fmt::Debug>(
    e: &aws_sdk_s3::error::SdkError<E, R>,
) -> bool {
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let text = format!("{:?}", s.raw());
            text.contains("status: 5")
                || text.contains("SlowDown")
                || text.contains("InternalError")
        }
        _ => false,
    }
}

async fn download_all(
    client: &Client,
    uri: &S3Uri,
    objects: &[(String, String, u64)],
    tmp: &Path,
    retry: Retry,
) -> Result<(String, u64), FetchError> {
    let mut manifest = Sha256::new();
    let mut total = 0;
    for (name, key, size) in objects {
        let path = tmp.join(name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
        }
        let digest = download_one(client, &uri.bucket, key, *size, &path, retry).await?;
        manifest.update(name.as_bytes());
        manifest.update([0]);
        manifest.update(digest);
        total += size;
    }
    fsync_dir(tmp).await?;
    Ok((hex(&manifest.finalize()), total))
}

/// Streams one object to `path`, resuming with a ranged GET after a cut; returns its sha256.
async fn download_one(
    client: &Client,
    bucket: &str,
    key: &str,
    size: u64,
    path: &Path,
    retry: Retry,
) -> Result<[u8; 32], FetchError> {
    let mut file = tokio::fs::File::create(path).await.map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut have: u64 = 0;
    let mut attempt = 0;
    while have < size || (size == 0 && attempt == 0) {
        attempt += 1;
        let mut req = client.get_object().bucket(bucket).key(key);
        if have > 0 {
            req = req.range(format!("bytes={have}-"));
        }
        let err = match req.send().await {
            Ok(resp) => {
                let mut body = resp.body;
                let mut cut = None;
                loop {
                    match body.try_next().await {
                        Ok(Some(chunk)) => {
                            file.write_all(&chunk).await.map_err(io(path))?;
                            hasher.update(&chunk);
                            have += chunk.len() as u64;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            cut = Some(e.to_string());
                            break;
                        }
                    }
                }
                match cut {
                    None => {
                        if size == 0 {
                            break;
                        }
                        continue;
                    }
                    Some(reason) => reason,
                }
            }
            Err(e) if retryable(&e) => aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
            Err(e) => {
                return Err(FetchError::S3 {
                    op: "GetObject",
                    target: format!("s3://{bucket}/{key}"),
                    attempts: attempt,
                    reason: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                });
            }
        };
        if attempt >= retry.attempts {
            return Err(FetchError::S3 {
                op: "GetObject",
                target: format!("s3://{bucket}/{key}"),
                attempts: attempt,
                reason: err,
            });
        }
        tracing::warn!(key, have, attempt, error = %err, "download interrupted; resuming");
        tokio::time::sleep(retry.backoff.jittered(attempt, nanos() as u64)).await;
    }
    if have != size {
        return Err(FetchError::SizeMismatch {
            key: key.into(),
            got: have,
            want: size,
        });
    }
    file.flush().await.map_err(io(path))?;
    file.sync_all().await.map_err(io(path))?;
    Ok(hasher.finalize().into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Removes every fetched artifact under `root` except those in `keep` (serving and previous).
/// Returns the removed directories.
pub async fn gc(root: &Path, keep: &[&Path]) -> Result<Vec<PathBuf>, FetchError> {
    let mut removed = Vec::new();
    let mut rd = tokio::fs::read_dir(root).await.map_err(io(root))?;
    while let Some(e) = rd.next_entry().await.map_err(io(root))? {
        let p = e.path();
        let is_artifact = e.file_name().to_string_lossy().starts_with("sha256-");
        if is_artifact && !keep.contains(&p.as_path()) {
            tokio::fs::remove_dir_all(&p).await.map_err(io(&p))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Builds an S3 client for an endpoint (path-style when an endpoint is given, as MinIO and
/// SeaweedFS need). Credentials: the given access key pair (from a Secret's keys), else the
/// default AWS chain (environment, profile, IRSA, instance metadata).
pub async fn client(endpoint: Option<&str>, region: &str, keys: Option<(&str, &str)>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()));
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep);
    }
    if let Some((ak, sk)) = keys {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            ak, sk, None, None, "kinfer",
        ));
    }
    let conf = aws_sdk_s3::config::Builder::from(&loader.load().await)
        .force_path_style(endpoint.is_some())
        .build();
    Client::from_conf(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_uris() {
        let u: S3Uri = "s3://models/fraud/v1".parse().unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("models", "fraud/v1/")
        );
        let u: S3Uri = "s3://models".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert!("http://x/y".parse::<S3Uri>().is_err());
        assert!("s3:///p".parse::<S3Uri>().is_err());
    }
}
