//! A client of the runtime's admin API (HTTP/1.1 + JSON on the pod's Unix socket): stage,
//! evaluate, shadow, serve, rollback, unload, stats, with the request and answer types of
//! `kinfer_contract::admin` that the runtime serves. One connection per call: the admin path is
//! rare and this keeps a runtime restart from leaving a dead connection behind.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use kinfer_contract::admin::{
    BaselineAnswer, BaselineRequest, Conflict, ErrorBody, EvaluateAnswer, EvaluateRequest,
    ReplayAnswer, ReplayRequest, ServeAnswer, ShadowAnswer, ShadowRequest, StageAnswer,
    StageRequest, StatsAnswer, UnloadAnswer, VersionRequest, paths,
};
use serde::{Serialize, de::DeserializeOwned};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket does not answer: the runtime is down or restarting.
    #[error("runtime admin socket {socket}: {source} (is the runtime container running?)")]
    Unavailable {
        /// The socket path.
        socket: PathBuf,
        /// What failed (connect, send, read).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime answered with an error status.
    #[error("runtime refused {op}: HTTP {status}: {}", body.error)]
    Refused {
        /// The endpoint.
        op: String,
        /// HTTP status.
        status: u16,
        /// The runtime's error body.
        body: ErrorBody,
    },
    /// The runtime answered 200 with a body that is not the contract's answer: a runtime of
    /// another version, or a bug on one side.
    #[error("runtime answered {op} with a body the watcher cannot read ({source}): {body}")]
    Contract {
        /// The endpoint.
        op: String,
        /// What did not parse.
        #[source]
        source: serde_json::Error,
        /// The start of the body.
        body: String,
    },
}

impl AdminError {
    /// The HTTP status when the runtime answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Refused { status, .. } => Some(*status),
            AdminError::Unavailable { .. } | AdminError::Contract { .. } => None,
        }
    }

    /// The conflict code of a 409.
    pub fn conflict(&self) -> Option<Conflict> {
        match self {
            AdminError::Refused { body, .. } => body.conflict,
            _ => None,
        }
    }

    /// The digest a 409 on `stage` reports as loaded.
    pub fn loaded_digest(&self) -> Option<&str> {
        match self {
            AdminError::Refused { body, .. } => body.digest.as_deref(),
            _ => None,
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

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Q>,
    ) -> Result<A, AdminError> {
        let unavailable = |e: Box<dyn std::error::Error + Send + Sync>| AdminError::Unavailable {
            socket: self.socket.clone(),
            source: e,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(e.into()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unavailable(e.into()))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| unavailable(e.into()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "kinfer-runtime")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unavailable(e.into()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(e.into()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(e.into()))?
            .to_bytes();
        let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if status != StatusCode::OK {
            let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| ErrorBody {
                error: text(),
                conflict: None,
                digest: None,
            });
            return Err(AdminError::Refused {
                op: path.to_owned(),
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&body).map_err(|source| AdminError::Contract {
            op: path.to_owned(),
            source,
            body: text(),
        })
    }

    /// Loads and warms `path` as `version` (recording its `digest`), not serving.
    pub async fn stage(
        &self,
        version: &str,
        path: &Path,
        digest: Option<&str>,
    ) -> Result<StageAnswer, AdminError> {
        let req = StageRequest {
            version: version.to_owned(),
            path: path.to_owned(),
            digest: digest.map(str::to_owned),
        };
        self.call(Method::POST, paths::STAGE, Some(&req)).await
    }

    /// Runs a golden set through a staged version.
    pub async fn evaluate(
        &self,
        version: &str,
        golden: &Path,
        atol: f64,
        rtol: f64,
    ) -> Result<EvaluateAnswer, AdminError> {
        let req = EvaluateRequest {
            version: version.to_owned(),
            golden: golden.to_owned(),
            atol,
            rtol,
        };
        self.call(Method::POST, paths::EVALUATE, Some(&req)).await
    }

    /// Mirrors `sample_rate` of live traffic to `version` (0 stops).
    pub async fn shadow(
        &self,
        version: &str,
        sample_rate: f64,
    ) -> Result<ShadowAnswer, AdminError> {
        let req = ShadowRequest {
            version: version.to_owned(),
            sample_rate,
        };
        self.call(Method::POST, paths::SHADOW, Some(&req)).await
    }

    /// Answers `fraction` of the serving version's live requests with `version` and compares
    /// `pair_rate` of them on both (a fraction of 0 stops; the figures start afresh each call).
    pub async fn baseline(
        &self,
        version: &str,
        fraction: f64,
        pair_rate: f64,
    ) -> Result<BaselineAnswer, AdminError> {
        let req = BaselineRequest {
            version: version.to_owned(),
            fraction,
            pair_rate,
        };
        self.call(Method::POST, paths::BASELINE, Some(&req)).await
    }

    /// Runs up to `requests` kept recent requests on both versions of the split, at `rate` per
    /// second on each (once per split: a repeat answers the replay's state).
    pub async fn replay(&self, requests: u64, rate: f64) -> Result<ReplayAnswer, AdminError> {
        let req = ReplayRequest { requests, rate };
        self.call(Method::POST, paths::REPLAY, Some(&req)).await
    }

    /// Makes `version` serve (a no-op when it serves already).
    pub async fn serve(&self, version: &str) -> Result<ServeAnswer, AdminError> {
        let req = VersionRequest {
            version: version.to_owned(),
        };
        self.call(Method::POST, paths::SERVE, Some(&req)).await
    }

    /// Makes `version` serve again because the one serving regressed (a no-op when it serves
    /// already, so a retried rollback never swaps the regression back in).
    pub async fn rollback(&self, version: &str) -> Result<ServeAnswer, AdminError> {
        let req = VersionRequest {
            version: version.to_owned(),
        };
        self.call(Method::POST, paths::ROLLBACK, Some(&req)).await
    }

    /// Frees a version that does not serve.
    pub async fn unload(&self, version: &str) -> Result<UnloadAnswer, AdminError> {
        let req = VersionRequest {
            version: version.to_owned(),
        };
        self.call(Method::POST, paths::UNLOAD, Some(&req)).await
    }

    /// Serving/previous versions and per-version statistics.
    pub async fn stats(&self) -> Result<StatsAnswer, AdminError> {
        self.call::<(), _>(Method::GET, paths::STATS, None).await
    }
}
