//! A client of the runtime's admin API (HTTP/1.1 + JSON on the pod's Unix socket): stage,
//! evaluate, shadow, promote, rollback, unload, stats. One connection per call: the admin path is
//! rare and this keeps a runtime restart from leaving a dead connection behind.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use serde_json::{Value, json};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket does not answer: the runtime is down or restarting.
    #[error("runtime admin socket {socket}: {reason} (is the runtime container running?)")]
    Unavailable {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The runtime answered with an error status.
    #[error("runtime refused {op}: HTTP {status}: {message}")]
    Refused {
        /// The endpoint.
        op: String,
        /// HTTP status.
        status: u16,
        /// The runtime's `error` text.
        message: String,
    },
}

impl AdminError {
    /// The HTTP status when the runtime answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Refused { status, .. } => Some(*status),
            AdminError::Unavailable { .. } => None,
        }
    }
}

/// The runtime's admin API on a Unix socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client of the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let unavailable = |reason: String| AdminError::Unavailable {
            socket: self.socket.clone(),
            reason,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unavailable(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "kinfer-runtime")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unavailable(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            return Err(AdminError::Refused {
                op: path.to_owned(),
                status: status.as_u16(),
                message: value["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            });
        }
        Ok(value)
    }

    /// Loads and warms `path` as `version`, not serving.
    pub async fn stage(&self, version: &str, path: &Path) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            "/admin/stage",
            Some(json!({"version": version, "path": path})),
        )
        .await
    }

    /// Runs a golden set through a staged version.
    pub async fn evaluate(
        &self,
        version: &str,
        golden: &Path,
        atol: f64,
        rtol: f64,
    ) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            "/admin/evaluate",
            Some(json!({"version": version, "golden": golden, "atol": atol, "rtol": rtol})),
        )
        .await
    }

    /// Mirrors `sample_rate` of live traffic to `version` (0 stops).
    pub async fn shadow(&self, version: &str, sample_rate: f64) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            "/admin/shadow",
            Some(json!({"version": version, "sampleRate": sample_rate})),
        )
        .await
    }

    /// Makes `version` serve; the one serving before becomes the previous version.
    pub async fn promote(&self, version: &str) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            "/admin/promote",
            Some(json!({"version": version})),
        )
        .await
    }

    /// Swaps the previous version back in.
    pub async fn rollback(&self) -> Result<Value, AdminError> {
        self.call(Method::POST, "/admin/rollback", None).await
    }

    /// Frees a version that does not serve.
    pub async fn unload(&self, version: &str) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            "/admin/unload",
            Some(json!({"version": version})),
        )
        .await
    }

    /// Serving/previous versions and per-version statistics.
    pub async fn stats(&self) -> Result<Value, AdminError> {
        self.call(Method::GET, "/admin/stats", None).await
    }
}
