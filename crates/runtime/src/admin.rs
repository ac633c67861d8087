//! The admin API for the model-watcher: HTTP/1.1 + JSON on a Unix socket (mode 0600), so only
//! the pod's own containers reach it and `curl --unix-socket` works. Requests and answers are the
//! types of `kinfer_contract::admin`, which the watcher's client uses too.
//!
//! `POST /admin/stage {"version","path","digest"}` load and warm, not serving ·
//! `POST /admin/evaluate {"version","golden","atol","rtol"}` run a golden set ·
//! `POST /admin/shadow {"version","sampleRate"}` mirror live traffic (0 stops) ·
//! `POST /admin/baseline {"version","fraction","pairRate"}` answer a fraction of live traffic
//! with the previous version during an analysis (0 stops) ·
//! `POST /admin/replay {"requests","rate"}` run kept recent requests on both versions of the split ·
//! `POST /admin/serve {"version"}` make it serve (`/admin/promote` is the same) ·
//! `POST /admin/rollback {"version"}` serve that version again, counted as a rollback ·
//! `POST /admin/unload {"version"}` · `GET /admin/stats`.
//!
//! Every call names the state it wants, so it is idempotent: serving or rolling back to the
//! version that serves answers `changed: false`; staging a label already loaded with the same
//! digest answers 409 `AlreadyLoaded` and changes nothing.

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kinfer_contract::admin::{
    BaselineAnswer, BaselineRequest, Conflict, ErrorBody, EvaluateRequest, MAX_REPLAY_RATE,
    ReplayAnswer, ReplayRequest, ShadowAnswer, ShadowRequest, StageAnswer, StageRequest,
    StatsAnswer, TensorInfo, UnloadAnswer, VersionEntry, VersionRequest, paths,
};

use crate::{
    golden,
    models::{
        baseline::MAX_FRACTION,
        registry::{Registry, RegistryError},
        version::{LoadOptions, LoadedVersion},
    },
    tensor::TensorSpec,
};

/// State of the admin API.
pub struct Admin {
    /// The model's versions.
    pub registry: Arc<Registry>,
    /// How new versions are loaded.
    pub options: LoadOptions,
}

fn conflict(conflict: Conflict, msg: impl std::fmt::Display) -> Response {
    let body = ErrorBody {
        error: msg.to_string(),
        conflict: Some(conflict),
        digest: None,
    };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

fn err(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(ErrorBody {
            error: msg.to_string(),
            conflict: None,
            digest: None,
        }),
    )
        .into_response()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, conflict, digest) = match &self {
            RegistryError::NotLoaded(_) => (StatusCode::NOT_FOUND, None, None),
            RegistryError::AlreadyLoaded { digest, .. } => (
                StatusCode::CONFLICT,
                Some(Conflict::AlreadyLoaded),
                digest.clone(),
            ),
            RegistryError::OtherBytes { loaded, .. } => (
                StatusCode::CONFLICT,
                Some(Conflict::OtherBytes),
                loaded.clone(),
            ),
            RegistryError::Serving(_) => (StatusCode::CONFLICT, Some(Conflict::Serving), None),
            RegistryError::NothingServes | RegistryError::BaselineServes(_) => {
                (StatusCode::CONFLICT, Some(Conflict::BaselineServing), None)
            }
        };
        let body = ErrorBody {
            error: self.to_string(),
            conflict,
            digest,
        };
        (status, Json(body)).into_response()
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
        .route(paths::STAGE, post(stage))
        .route(paths::EVALUATE, post(evaluate))
        .route(paths::SHADOW, post(shadow))
        .route(paths::BASELINE, post(baseline))
        .route(paths::REPLAY, post(replay))
        .route(paths::SERVE, post(serve))
        .route(paths::PROMOTE, post(serve))
        .route(paths::ROLLBACK, post(rollback))
        .route(paths::UNLOAD, post(unload))
        .route(paths::STATS, get(stats))
        .with_state(admin)
}

fn tensor_info(specs: &[TensorSpec]) -> Vec<TensorInfo> {
    specs
        .iter()
        .map(|s| TensorInfo {
            name: s.name.clone(),
            datatype: s.dtype.as_oip().into(),
            shape: s.shape.clone(),
        })
        .collect()
}

async fn stage(State(a): State<Arc<Admin>>, body: JsonBody<StageRequest>) -> Response {
    let req = match parse(body, r#"stage expects {"version", "path", "digest"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.version.is_empty() {
        return err(StatusCode::BAD_REQUEST, "version must not be empty");
    }
    // Nothing to load: the same bytes are loaded, or the label serves other bytes.
    if let Err(e) = a.registry.check_stage(&req.version, req.digest.as_deref()) {
        return e.into_response();
    }
    let started = Instant::now();
    let (name, opts) = (a.registry.name.clone(), a.options.clone());
    let (version, path, digest) = (req.version.clone(), req.path.clone(), req.digest.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        LoadedVersion::load(&name, &version, &path, digest, &opts)
    })
    .await;
    match loaded {
        Ok(Ok(v)) => {
            let answer = StageAnswer {
                version: v.info.version.clone(),
                digest: v.digest.clone(),
                load_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                batching: v.batching,
                inputs: tensor_info(&v.info.inputs),
                outputs: tensor_info(&v.info.outputs),
            };
            if let Err(e) = a.registry.stage(v) {
                return e.into_response();
            }
            tracing::info!(version = %req.version, path = %req.path.display(), digest = ?req.digest, ms = answer.load_ms, "staged");
            Json(answer).into_response()
        }
        Ok(Err(e)) => err(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("loader panicked: {e}"),
        ),
    }
}

async fn serve(State(a): State<Arc<Admin>>, body: JsonBody<VersionRequest>) -> Response {
    let req = match parse(body, r#"serve expects {"version"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match a.registry.serve(&req.version, false) {
        Ok(answer) => {
            if answer.changed {
                tracing::info!(version = %req.version, previous = ?answer.previous, "serving");
            }
            Json(answer).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn rollback(State(a): State<Arc<Admin>>, body: JsonBody<VersionRequest>) -> Response {
    let req = match parse(
        body,
        r#"rollback expects {"version"}: the version to serve again"#,
    ) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match a.registry.serve(&req.version, true) {
        Ok(answer) => {
            if answer.changed {
                tracing::warn!(serving = %answer.serving, rolled_back = ?answer.previous, "rolled back");
            }
            Json(answer).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn unload(State(a): State<Arc<Admin>>, body: JsonBody<VersionRequest>) -> Response {
    let req = match parse(body, r#"unload expects {"version"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match a.registry.unload(&req.version) {
        Ok(()) => Json(UnloadAnswer {
            unloaded: req.version,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stats(State(a): State<Arc<Admin>>) -> Response {
    let r = &a.registry;
    let versions = r
        .all()
        .iter()
        .map(|v| {
            (
                v.info.version.clone(),
                VersionEntry {
                    queue_depth: u64::try_from(v.queue_depth()).unwrap_or(u64::MAX),
                    batching: v.batching,
                    digest: v.digest.clone(),
                    stats: v.stats.snapshot(),
                },
            )
        })
        .collect();
    Json(StatsAnswer {
        model: r.name.clone(),
        serving: r.serving().map(|v| v.info.version.clone()),
        previous: r.previous().map(|v| v.info.version.clone()),
        ready: r.ready(),
        swaps: r.swaps.load(std::sync::atomic::Ordering::Relaxed),
        rollbacks: r.rollbacks.load(std::sync::atomic::Ordering::Relaxed),
        shadow: r.shadow().map(|s| s.summary()),
        baseline: r.baseline().map(|b| b.summary()),
        versions,
        cpu_pinning: a.options.pinning.as_ref().map(|p| p.report.clone()),
    })
    .into_response()
}

async fn shadow(State(a): State<Arc<Admin>>, body: JsonBody<ShadowRequest>) -> Response {
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
        return conflict(
            Conflict::ShadowServing,
            format!(
                "version '{}' is serving; shadow a staged version",
                req.version
            ),
        );
    }
    match a.registry.set_shadow(&req.version, req.sample_rate) {
        Ok(stopped) => Json(ShadowAnswer {
            shadow: a.registry.shadow().map(|s| s.summary()),
            stopped,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn baseline(State(a): State<Arc<Admin>>, body: JsonBody<BaselineRequest>) -> Response {
    let req = match parse(
        body,
        r#"baseline expects {"version", "fraction", "pairRate"}"#,
    ) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !(0.0..=MAX_FRACTION).contains(&req.fraction) {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "fraction {} must be between 0 and {MAX_FRACTION} (0 stops the split; the candidate keeps at least half of the traffic)",
                req.fraction
            ),
        );
    }
    if !(0.0..=1.0).contains(&req.pair_rate) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("pairRate {} must be between 0 and 1", req.pair_rate),
        );
    }
    match a
        .registry
        .set_baseline(&req.version, req.fraction, req.pair_rate)
    {
        Ok(stopped) => Json(BaselineAnswer {
            baseline: a.registry.baseline().map(|b| b.summary()),
            stopped,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn replay(State(a): State<Arc<Admin>>, body: JsonBody<ReplayRequest>) -> Response {
    let req = match parse(body, r#"replay expects {"requests", "rate"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !(req.rate > 0.0 && req.rate <= MAX_REPLAY_RATE) {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "rate {} must be above 0 and at most {MAX_REPLAY_RATE} requests per second",
                req.rate
            ),
        );
    }
    let Some(ring) = a.registry.ring() else {
        return conflict(
            Conflict::ReplayOff,
            "this runtime keeps no requests to replay: start it with --replay-requests N (analysis.replay in an InferenceService)",
        );
    };
    let Some(split) = a.registry.baseline() else {
        return conflict(
            Conflict::NoBaseline,
            "no paired baseline runs: replay runs on both versions of a split, start one with POST /admin/baseline",
        );
    };
    let available = ring.len() as u64;
    let started = split.replay.begin();
    if started {
        let kept = ring.recent(usize::try_from(req.requests).unwrap_or(usize::MAX));
        tracing::info!(requests = kept.len(), rate = req.rate, candidate = %split.candidate.version.info.version, baseline = %split.baseline.version.info.version, "replaying kept requests on both versions");
        crate::server::replay::start(a.registry.clone(), split.clone(), kept, req.rate);
    }
    match split.replay.summary() {
        Some(replay) => Json(ReplayAnswer {
            started,
            available,
            replay,
        })
        .into_response(),
        None => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the replay did not begin",
        ),
    }
}

async fn evaluate(State(a): State<Arc<Admin>>, body: JsonBody<EvaluateRequest>) -> Response {
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
