//! Fetching against a real S3 server: SeaweedFS (`weed mini`, the S3 server of the local
//! cluster, built by `tests/e2e/cluster/build.sh s3`) started on loopback by each test.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kinfer_contract::backoff::Backoff;
use kinfer_watcher::fetch::{self, FetchError, Retry, S3Uri};

fn weed() -> PathBuf {
    let root = std::env::var_os("KINFER_BIN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kinfer/bin"));
    let found = std::fs::read_dir(&root).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path().join("bin/weed"))
            .find(|p| p.is_file() && p.to_string_lossy().contains("seaweedfs-"))
    });
    found.unwrap_or_else(|| {
        panic!(
            "SeaweedFS (weed) not found under {}: run `bash tests/e2e/cluster/build.sh s3` (make test does)",
            root.display()
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct S3 {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

const AK: &str = "kinfertest";
const SK: &str = "kinfertestsecret0123456789";

impl S3 {
    fn start() -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("ids.json");
        std::fs::write(
            &ids,
            format!(r#"{{"identities":[{{"name":"t","credentials":[{{"accessKey":"{AK}","secretKey":"{SK}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#),
        )
        .unwrap();
        let s3_port = free_port();
        let port = |p: u16| p.to_string();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let args: Vec<String> = vec![
            "mini".into(),
            "-dir".into(),
            data.display().to_string(),
            "-ip".into(),
            "127.0.0.1".into(),
            "-ip.bind".into(),
            "127.0.0.1".into(),
            "-s3.port".into(),
            port(s3_port),
            "-master.port".into(),
            port(free_port()),
            "-volume.port".into(),
            port(free_port()),
            "-filer.port".into(),
            port(free_port()),
            "-s3.config".into(),
            ids.display().to_string(),
            "-bucket".into(),
            "models".into(),
            "-master.telemetry=false".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.volumeSizeLimitMB".into(),
            "64".into(),
        ];
        let child = Command::new(weed())
            .args(&args)
            .env("TMPDIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weed mini");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = s3.client(SK).await;
            loop {
                if c.head_bucket().bucket("models").send().await.is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "weed mini did not serve S3 in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        s3
    }

    async fn client(&self, secret: &str) -> aws_sdk_s3::Client {
        fetch::client(Some(&self.endpoint), "us-east-1", Some((AK, secret))).await
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.client(SK)
            .await
            .put_object()
            .bucket("models")
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fast_retry() -> Retry {
    Retry {
        attempts: 3,
        backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(100)),
    }
}

fn entries(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn fetches_atomically_caches_by_digest_and_collects_garbage() {
    let s3 = tokio::task::spawn_blocking(S3::start).await.unwrap();
    let model: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s3.put("fraud/v1/model.onnx", model.clone()).await;
    s3.put("fraud/v1/golden.npz", b"golden".to_vec()).await;
    s3.put("fraud/v1/meta/labels.txt", b"allow\nblock\n".to_vec())
        .await;
    s3.put("fraud/v2/model.onnx", b"other".to_vec()).await;
    let root = tempfile::tempdir().unwrap();
    let c = s3.client(SK).await;
    let uri: S3Uri = "s3://models/fraud/v1/".parse().unwrap();

    // A download killed earlier left a partial directory: it is removed, never used.
    std::fs::create_dir_all(root.path().join(".partial-1-1")).unwrap();
    std::fs::write(root.path().join(".partial-1-1/model.onnx"), b"half").unwrap();

    let f = fetch::fetch(&c, &uri, root.path(), fast_retry())
        .await
        .unwrap();
    assert!(!f.cached);
    assert_eq!(f.bytes, model.len() as u64 + 6 + 12);
    assert_eq!(std::fs::read(f.dir.join("model.onnx")).unwrap(), model);
    assert_eq!(
        std::fs::read(f.dir.join("meta/labels.txt")).unwrap(),
        b"allow\nblock\n"
    );
    assert_eq!(
        f.dir.file_name().unwrap().to_string_lossy(),
        format!("sha256-{}", &f.digest[7..])
    );
    assert_eq!(
        entries(root.path()),
        vec![format!("sha256-{}", &f.digest[7..])],
        "no partial directory left"
    );

    let again = fetch::fetch(&c, &uri, root.path(), fast_retry())
        .await
        .unwrap();
    assert!(again.cached, "same bytes, same digest: already present");
    assert_eq!(again.dir, f.dir);

    let v2 = fetch::fetch(
        &c,
        &"s3://models/fraud/v2".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap();
    assert_ne!(v2.digest, f.digest);
    let removed = fetch::gc(root.path(), &[&v2.dir]).await.unwrap();
    assert_eq!(removed, vec![f.dir.clone()]);
    assert_eq!(
        entries(root.path()),
        vec![v2.dir.file_name().unwrap().to_string_lossy().into_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_and_empty_prefix_are_clear_errors() {
    let s3 = tokio::task::spawn_blocking(S3::start).await.unwrap();
    s3.put("m/v1/model.onnx", b"x".to_vec()).await;
    let root = tempfile::tempdir().unwrap();
    let bad = s3.client("not-the-secret").await;
    let e = fetch::fetch(
        &bad,
        &"s3://models/m/v1/".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            FetchError::S3 {
                op: "ListObjectsV2",
                attempts: 1,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("SignatureDoesNotMatch")
            || msg.contains("AccessDenied")
            || msg.contains("InvalidAccessKeyId"),
        "{msg}"
    );
    let good = s3.client(SK).await;
    let e = fetch::fetch(
        &good,
        &"s3://models/m/v9/".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Empty { .. }), "{e}");
    assert!(e.to_string().contains("holds no objects"), "{e}");
    assert!(entries(root.path()).is_empty(), "nothing half-written left");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_outage_fails_after_retries_and_keeps_what_was_fetched() {
    let mut s3 = tokio::task::spawn_blocking(S3::start).await.unwrap();
    s3.put("m/v1/model.onnx", b"v1".to_vec()).await;
    let root = tempfile::tempdir().unwrap();
    let c = s3.client(SK).await;
    let v1 = fetch::fetch(
        &c,
        &"s3://models/m/v1/".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap();
    s3.child.kill().unwrap();
    s3.child.wait().unwrap();
    let t = Instant::now();
    let e = fetch::fetch(
        &c,
        &"s3://models/m/v2/".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::S3 { attempts: 3, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(
        entries(root.path()),
        vec![v1.dir.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert_eq!(std::fs::read(v1.dir.join("model.onnx")).unwrap(), b"v1");
}

/// Fault injection the real server cannot do on demand: a loopback TCP proxy in front of S3 that
/// cuts the connection once, after 1 MiB of response bytes — a download interrupted mid-file.
async fn cutting_proxy(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let cut_done = Arc::new(AtomicBool::new(false));
    let flag = cut_done.clone();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let flag = flag.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !flag.load(Ordering::SeqCst) && sent + n > 1 << 20 {
                        flag.store(true, Ordering::SeqCst);
                        let _ = cw.write_all(&buf[..(1 << 20) - sent]).await;
                        break; // drop both halves: the client sees the body end early
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
            });
        }
    });
    (addr, cut_done)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_download_resumes_with_a_ranged_get() {
    let s3 = tokio::task::spawn_blocking(S3::start).await.unwrap();
    let model: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
    s3.put("big/v1/model.onnx", model.clone()).await;
    let (proxy, cut) = cutting_proxy(s3.endpoint.clone()).await;
    let c = fetch::client(Some(&proxy), "us-east-1", Some((AK, SK))).await;
    let root = tempfile::tempdir().unwrap();
    let f = fetch::fetch(
        &c,
        &"s3://models/big/v1/".parse().unwrap(),
        root.path(),
        fast_retry(),
    )
    .await
    .unwrap();
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy cut the download"
    );
    assert_eq!(
        std::fs::read(f.dir.join("model.onnx")).unwrap(),
        model,
        "resumed bytes are exact"
    );
    let direct = s3.client(SK).await;
    let again = fetch::fetch(
        &direct,
        &"s3://models/big/v1/".parse().unwrap(),
        tempfile::tempdir().unwrap().path(),
        fast_retry(),
    )
    .await
    .unwrap();
    assert_eq!(again.digest, f.digest);
}
