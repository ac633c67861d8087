//! The admin API for the model-watcher: HTTP/1.1 + JSON on a Unix socket (mode 0600), so only
//! the pod's own containers reach it and `curl --unix-socket` works.
//!
//! `POST /admin/stage {"version","path"}` load and warm, not serving ·
//! `POST /admin/evaluate {"version","golden","atol","rtol"}` run a golden set ·
//! `POST /admin/shadow {"version","sampleRate"}` mirror live traffic (0 stops) ·
//! `POST /admin/promote {"version"}` atomic swap · `POST /admin/rollback` swap back ·
//! `POST /admin/unload {"version"}` · `GET /admin/stats`.

use std::{path::PathBuf, sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    golden,
    models::{
        registry::{Registry, RegistryError},
        version::{LoadOptions, LoadedVersion},
    },
};

/// State of the admin API.
pub struct Admin {
    /// The model's versions.
    pub registry: Arc<Registry>,
    /// How new versions are loaded.
    pub options: LoadOptions,
}

fn err(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = match self {
            RegistryError::NotLoaded(_) => StatusCode::NOT_FOUND,
            RegistryError::AlreadyLoaded(_)
            | RegistryError::Serving(_)
            | RegistryError::NoPrevious => StatusCode::CONFLICT,
        };
        err(status, self)
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// Unwraps a JSON body or answers 400 saying what the endpoint expects.
#[allow(clippy::result_large_err)] // admin path, not the request path: the Response is returned as is
fn parse<T>(body: JsonBody<T>, expects: &str) -> Result<T, Response> {
    body.map(|Json(r)| r)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("{expects}: {e}")))
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/stage", post(stage))
        .route("/admin/evaluate", post(evaluate))
        .route("/admin/shadow", post(shadow))
        .route("/admin/promote", post(promote))
        .route("/admin/rollback", post(rollback))
        .route("/admin/unload", post(unload))
        .route("/admin/stats", get(stats))
        .with_state(admin)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageReq {
    version: String,
    path: PathBuf,
}

async fn stage(State(a): State<Arc<Admin>>, body: JsonBody<StageReq>) -> Response {
    let req = match parse(body, r#"stage expects {"version", "path"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.version.is_empty() {
        return err(StatusCode::BAD_REQUEST, "version must not be empty");
    }
    if a.registry.get(&req.version).is_some() {
        return RegistryError::AlreadyLoaded(req.version).into_response();
    }
    let started = Instant::now();
    let (name, opts, version, path) = (
        a.registry.name.clone(),
        a.options.clone(),
        req.version.clone(),
        req.path.clone(),
    );
    let loaded =
        tokio::task::spawn_blocking(move || LoadedVersion::load(&name, &version, &path, &opts))
            .await;
    match loaded {
        Ok(Ok(v)) => {
            let info = v.info.clone();
            if let Err(e) = a.registry.stage(v) {
                return e.into_response();
            }
            tracing::info!(version = %req.version, path = %req.path.display(), ms = started.elapsed().as_millis() as u64, "staged");
            Json(json!({"version": info.version, "loadMs": started.elapsed().as_millis() as u64,
                        "inputs": info.inputs.iter().map(|s| json!({"name": s.name, "datatype": s.dtype.as_oip(), "shape": s.shape})).collect::<Vec<_>>(),
                        "outputs": info.outputs.iter().map(|s| json!({"name": s.name, "datatype": s.dtype.as_oip(), "shape": s.shape})).collect::<Vec<_>>()}))
            .into_response()
        }
        Ok(Err(e)) => err(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("loader panicked: {e}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionReq {
    version: String,
}

async fn promote(State(a): State<Arc<Admin>>, body: JsonBody<VersionReq>) -> Response {
    let req = match parse(body, r#"promote expects {"version"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match a.registry.promote(&req.version) {
        Ok(previous) => {
            tracing::info!(version = %req.version, previous = ?previous, "promoted");
            Json(json!({"serving": req.version, "previous": previous})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn rollback(State(a): State<Arc<Admin>>) -> Response {
    match a.registry.rollback() {
        Ok((serving, rolled_back)) => {
            tracing::warn!(serving = %serving, rolled_back = %rolled_back, "rolled back");
            Json(json!({"serving": serving, "previous": rolled_back})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn unload(State(a): State<Arc<Admin>>, body: JsonBody<VersionReq>) -> Response {
    let req = match parse(body, r#"unload expects {"version"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match a.registry.unload(&req.version) {
        Ok(()) => Json(json!({"unloaded": req.version})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stats(State(a): State<Arc<Admin>>) -> Response {
    let r = &a.registry;
    let versions: serde_json::Map<String, serde_json::Value> = r
        .all()
        .iter()
        .map(|v| {
            (
                v.info.version.clone(),
                json!({"queueDepth": v.queue_depth(), "batching": v.batching, "stats": v.stats.snapshot()}),
            )
        })
        .collect();
    Json(json!({
        "model": r.name,
        "serving": r.serving().map(|v| v.info.version.clone()),
        "previous": r.previous().map(|v| v.info.version.clone()),
        "ready": r.ready(),
        "swaps": r.swaps.load(std::sync::atomic::Ordering::Relaxed),
        "rollbacks": r.rollbacks.load(std::sync::atomic::Ordering::Relaxed),
        "shadow": r.shadow().map(|s| s.summary()),
        "versions": versions,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ShadowReq {
    #[serde(default)]
    version: String,
    sample_rate: f64,
}

async fn shadow(State(a): State<Arc<Admin>>, body: JsonBody<ShadowReq>) -> Response {
    let req = match parse(body, r#"shadow expects {"version", "sampleRate"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !(0.0..=1.0).contains(&req.sample_rate) {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "sampleRate {} must be between 0 and 1 (0 stops shadowing)",
                req.sample_rate
            ),
        );
    }
    if req.sample_rate > 0.0
        && a.registry
            .serving()
            .is_some_and(|s| s.info.version == req.version)
    {
        return err(
            StatusCode::CONFLICT,
            format!(
                "version '{}' is serving; shadow a staged version",
                req.version
            ),
        );
    }
    match a.registry.set_shadow(&req.version, req.sample_rate) {
        Ok(previous) => {
            Json(json!({"shadow": a.registry.shadow().map(|s| s.summary()), "stopped": previous}))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateReq {
    version: String,
    golden: PathBuf,
    #[serde(default = "default_atol")]
    atol: f64,
    #[serde(default = "default_rtol")]
    rtol: f64,
}

fn default_atol() -> f64 {
    1e-5
}
fn default_rtol() -> f64 {
    1e-4
}

async fn evaluate(State(a): State<Arc<Admin>>, body: JsonBody<EvaluateReq>) -> Response {
    let req = match parse(body, r#"evaluate expects {"version", "golden"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(v) = a.registry.get(&req.version) else {
        return RegistryError::NotLoaded(req.version).into_response();
    };
    let set = match tokio::task::spawn_blocking({
        let p = req.golden.clone();
        move || golden::GoldenSet::read(&p)
    })
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return err(StatusCode::BAD_REQUEST, e),
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    match golden::evaluate(&v, &set, req.atol, req.rtol).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => err(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}
