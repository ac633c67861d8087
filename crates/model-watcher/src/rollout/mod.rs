//! One version's way into service in this pod: fetch → verify → stage → golden-set gate →
//! (shadow) → baseline → promote → analysis → keep or roll back, reported at every step.
//!
//! The [`Watcher`] owns what this pod's runtime serves as far as the watcher knows it, the
//! verified artifact directory of each version, and the [`Reporter`] that tells the world
//! (pod annotations, condition and Events in a cluster; JSON lines on stdout standalone).
//! Decisions are the pure functions of [`crate::analysis`]; everything here is I/O and order:
//! this file the order ([`Watcher::apply`]), [`bring_in`] the way in up to promotion (fetch,
//! signature, stage, golden set, shadow), [`judge`] the analysis after it and the rollback.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use kinfer_api::{
    inference_service::RolloutSpec,
    model_version::ModelVersionSpec,
    report::{AnalysisPhase, AnalysisReport, Verdict, reasons},
};

use kinfer_contract::{
    admin::{Conflict, CpuPinning},
    backoff::Backoff,
    telemetry::TARGET,
};
use tracing::{Instrument, field::Empty};

mod bring_in;
mod judge;

pub use bring_in::verify_artifact;

use crate::{
    admin::{AdminClient, AdminError},
    fetch::{self, Retry},
    metrics::{Metrics, Step},
    report::Reporter,
    signature::TrustedKey,
};

/// The model file inside an artifact directory.
pub const MODEL_FILE: &str = "model.onnx";

/// Everything needed to bring one version in: the ModelVersion and the service's rollout rules.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The ModelVersion's name; also the version label inside the runtime.
    pub name: String,
    /// Source, signature and validation settings.
    pub spec: ModelVersionSpec,
    /// S3 access key pair (from the credentials Secret or file); the default AWS chain when `None`.
    pub credentials: Option<(String, String)>,
    /// Trusted signing keys.
    pub keys: Vec<TrustedKey>,
    /// The manifest digest (`sha256:<hex>`) the fetched artifact must have: in a cluster the
    /// ModelVersion's `status.digest`, recorded by its verification Job. `None` (standalone
    /// without `--expect-digest`) serves whatever verifies.
    pub digest: Option<String>,
    /// Analysis and shadow settings of the InferenceService.
    pub rollout: RolloutSpec,
}

/// Tunables that are not part of the API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the analysis reads the runtime's stats.
    pub poll: Duration,
    /// See [`Limits::p99_noise_floor`].
    pub p99_noise_floor: Duration,
    /// Per-request S3 retries inside one fetch.
    pub fetch_retry: Retry,
    /// Give up fetching after this long (standalone); `None` retries until the target changes.
    pub fetch_deadline: Option<Duration>,
    /// Longest pause between two fetch attempts.
    pub fetch_backoff_max: Duration,
    /// The largest artifact downloaded (bytes, all files); larger ones are refused up front.
    pub max_artifact_bytes: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            p99_noise_floor: Duration::from_micros(250),
            fetch_retry: Retry::default(),
            fetch_deadline: None,
            fetch_backoff_max: Duration::from_secs(60),
            max_artifact_bytes: None,
        }
    }
}

/// How long a rollback is asked for again when its answer does not come back.
pub const ROLLBACK_DEADLINE: Duration = Duration::from_secs(30);
/// Waits between repeated admin calls whose answer was lost.
const ADMIN_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Why a step stopped the version (the report's reason and message).
struct Stop {
    reason: &'static str,
    message: String,
}

fn stop(reason: &'static str, message: impl Into<String>) -> Stop {
    Stop {
        reason,
        message: message.into(),
    }
}

/// The watcher of one pod.
pub struct Watcher {
    /// The runtime's admin API.
    pub admin: AdminClient,
    /// Where artifacts are fetched to (the shared volume).
    pub models_dir: PathBuf,
    /// Where reports go.
    pub reporter: Reporter,
    /// Tunables.
    pub settings: Settings,
    /// Verified artifact directory and digest of each version fetched by this watcher.
    artifacts: HashMap<String, (PathBuf, String)>,
    /// The version this watcher made (or found) serving.
    serving: Option<String>,
    /// The last report that refused or rolled back a version, kept so that being sent back to
    /// the version that still serves does not overwrite the explanation on the pod.
    rejection: Option<AnalysisReport>,
    /// The report a previous run of the watcher left unfinished (it was killed): a version
    /// promoted but not judged is judged again instead of being taken as passed.
    interrupted: Option<AnalysisReport>,
    /// Where the runtime's inference threads run, as it last said (`--cpu-affinity auto`).
    cpu_pinning: Option<CpuPinning>,
    /// Verdicts, step durations and downloads (`/metrics`).
    pub metrics: Arc<Metrics>,
}

/// Runs one step of a rollout in a span of its own (a child of the rollout's) and records how
/// long it took.
async fn timed<T>(metrics: &Metrics, step: Step, work: impl Future<Output = T>) -> T {
    let span = tracing::info_span!(target: TARGET, "step", otel.name = step.name());
    let started = Instant::now();
    let out = work.instrument(span).await;
    metrics.step(step, started.elapsed());
    out
}

fn now() -> String {
    // RFC 3339 without a date crate: the API server's Time type formats it.
    let t = k8s_openapi::jiff::Timestamp::now();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Watcher {
    /// A watcher for the runtime behind `admin`.
    pub fn new(
        admin: AdminClient,
        models_dir: PathBuf,
        reporter: Reporter,
        settings: Settings,
    ) -> Self {
        Self {
            admin,
            models_dir,
            reporter,
            settings,
            artifacts: HashMap::new(),
            serving: None,
            rejection: None,
            interrupted: None,
            cpu_pinning: None,
            metrics: Arc::default(),
        }
    }

    /// Takes over from a previous run of the watcher in this pod: `last` is the report it left
    /// (the pod's `kinfer.dev/analysis` annotation). A decided refusal or rollback is remembered
    /// as before the restart; an unfinished one is finished by the next [`Watcher::apply`] of
    /// that version.
    pub fn resume_from(&mut self, last: AnalysisReport) {
        match (last.phase, last.verdict) {
            (AnalysisPhase::Done, Some(Verdict::Passed)) | (AnalysisPhase::Done, None) => {}
            (AnalysisPhase::Done, Some(_)) => self.rejection = Some(last),
            _ => self.interrupted = Some(last),
        }
    }

    /// The version this watcher believes serves.
    pub fn serving(&self) -> Option<&str> {
        self.serving.as_deref()
    }

    async fn update(
        &self,
        r: &mut AnalysisReport,
        phase: AnalysisPhase,
        message: impl Into<String>,
    ) {
        r.phase = phase;
        r.message = Some(message.into());
        r.updated = Some(now());
        self.reporter.report(r).await;
    }

    /// Learns what the runtime serves (at start, and after the runtime restarted) and where its
    /// inference threads run.
    pub async fn sync(&mut self) -> Result<Option<String>, AdminError> {
        let stats = self.admin.stats().await?;
        self.cpu_pinning = stats.cpu_pinning;
        Ok(stats.serving)
    }

    /// Where the runtime's inference threads run, as of the last [`Watcher::sync`]; `None` when
    /// the runtime is not pinned (or was not reached yet).
    pub fn cpu_pinning(&self) -> Option<&CpuPinning> {
        self.cpu_pinning.as_ref()
    }

    /// Stages `version` from its verified artifact (a no-op when those bytes are loaded) and
    /// makes it serve. `false` when this watcher has no artifact for it.
    async fn serve_verified(&self, version: &str) -> Result<bool, AdminError> {
        let Some((dir, digest)) = self.artifacts.get(version).cloned() else {
            return Ok(false);
        };
        match self
            .admin
            .stage(version, &dir.join(MODEL_FILE), Some(&digest))
            .await
        {
            Ok(_) => {}
            Err(e) if e.conflict() == Some(Conflict::AlreadyLoaded) => {}
            Err(e) => return Err(e),
        }
        self.admin.serve(version).await?;
        Ok(true)
    }

    /// Makes the runtime serve `version` again from its verified artifact, after the runtime
    /// restarted empty. No analysis: it was verified and judged before.
    pub async fn restore(&mut self) -> Result<bool, AdminError> {
        let Some(version) = self.serving.clone() else {
            return Ok(false);
        };
        if !self.serve_verified(&version).await? {
            return Ok(false);
        }
        tracing::warn!(%version, "runtime restarted: staged and promoted the serving version again");
        self.reporter
            .event(
                false,
                reasons::PROMOTED,
                &format!("runtime restarted; {version} restored from its verified artifact"),
            )
            .await;
        self.reporter
            .serving(
                Some(&version),
                true,
                "Serving",
                &format!("{version} serves (restored after a runtime restart)"),
            )
            .await;
        Ok(true)
    }

    /// Brings `plan`'s version into service, or refuses it, or rolls it back; returns the final
    /// report (phase `Done`). The whole way is one trace: the root span `rollout` (the version,
    /// the one it replaces, the digest and the verdict), a child per step and one for the
    /// verdict.
    pub async fn apply(&mut self, plan: &Plan) -> AnalysisReport {
        let root = tracing::info_span!(target: TARGET, parent: None, "rollout",
            otel.name = "rollout",
            kinfer.version = %plan.name,
            kinfer.previous = Empty,
            kinfer.digest = Empty,
            kinfer.verdict = Empty,
            kinfer.reason = Empty,
            otel.status_code = Empty,
        );
        let r = self.apply_traced(plan).instrument(root.clone()).await;
        if let Some(p) = &r.previous_version {
            root.record("kinfer.previous", p.as_str());
        }
        if let Some(d) = &r.digest {
            root.record("kinfer.digest", d.as_str());
        }
        if r.phase == AnalysisPhase::Done {
            let verdict = r.verdict.map(|v| format!("{v:?}")).unwrap_or_default();
            let reason = r.reason.as_deref().unwrap_or("");
            root.record("kinfer.verdict", verdict.as_str());
            root.record("kinfer.reason", reason);
            if r.verdict != Some(Verdict::Passed) {
                root.record("otel.status_code", "ERROR");
            }
            let _verdict = tracing::info_span!(target: TARGET, parent: &root, "verdict",
                otel.name = "verdict",
                kinfer.verdict = verdict.as_str(),
                kinfer.reason = reason,
                message = r.message.as_deref().unwrap_or(""),
            );
            self.metrics.verdict(r.verdict, r.reason.as_deref());
        }
        r
    }

    async fn apply_traced(&mut self, plan: &Plan) -> AnalysisReport {
        let mut r = AnalysisReport {
            version: plan.name.clone(),
            ..Default::default()
        };
        let runtime = match self.admin.stats().await {
            Ok(s) => s,
            Err(e) => {
                // Nothing changes while the runtime is away; the caller retries.
                r.reason = Some(reasons::LOAD_FAILED.into());
                self.update(&mut r, AnalysisPhase::Pending, e.to_string())
                    .await;
                return r;
            }
        };
        let serving = runtime.serving.clone();
        let previous = runtime.previous.clone();
        self.serving = serving.clone();
        r.previous_version = serving.clone();

        if serving.as_deref() == Some(plan.name.as_str()) {
            // Promoted by a watcher that was killed before its verdict: judge it now, against
            // the version kept warm, instead of calling it passed.
            if let (Some(old), Some(last)) = (previous.as_deref(), self.interrupted.take())
                && last.version == plan.name
                && last.phase == AnalysisPhase::Analysing
            {
                return self.resume_analysis(plan, last, old, &runtime).await;
            }
            // It serves, so the pod is ready with it (also after a watcher restart, which set
            // the condition False on start).
            let msg = format!("{} already serves", plan.name);
            self.reporter
                .serving(Some(&plan.name), true, "Serving", &msg)
                .await;
            // Sent back here after a refusal or rollback, or still serving a version judged
            // Regressed or Inconclusive (also after a watcher restart): that report stays the
            // pod's answer, never "passed" for a version that was not.
            if let Some(rej) = &self.rejection
                && (rej.previous_version.as_deref() == Some(plan.name.as_str())
                    || (rej.version == plan.name
                        && matches!(
                            rej.verdict,
                            Some(Verdict::Regressed | Verdict::Inconclusive)
                        )))
            {
                // Said again (the same report the pod keeps), so a standalone run prints it.
                let rej = rej.clone();
                self.reporter.report(&rej).await;
                return rej;
            }
            return self.done(r, Verdict::Passed, None, msg).await;
        }
        if previous.as_deref() == Some(plan.name.as_str()) {
            // Back to the version that served before (an aborted rollout): instant and known
            // good, and its figures are kept (a rollback, not a new promotion).
            return match self.roll_back_to(&plan.name).await {
                Ok(()) => {
                    self.serving = Some(plan.name.clone());
                    let msg = format!(
                        "{} restored (it was kept warm as the previous version)",
                        plan.name
                    );
                    self.reporter.event(false, reasons::PROMOTED, &msg).await;
                    self.reporter
                        .serving(Some(&plan.name), true, "Serving", &msg)
                        .await;
                    self.done(r, Verdict::Passed, None, msg).await
                }
                Err(e) => {
                    self.done(
                        r,
                        Verdict::Refused,
                        Some(reasons::LOAD_FAILED),
                        e.to_string(),
                    )
                    .await
                }
            };
        }

        match self.bring_in(plan, &mut r, serving.as_deref()).await {
            Ok(()) => r,
            Err(s) => {
                let verdict = if r.phase == AnalysisPhase::Analysing {
                    Verdict::RolledBack
                } else {
                    Verdict::Refused
                };
                self.done(r, verdict, Some(s.reason), s.message).await
            }
        }
    }

    async fn done(
        &mut self,
        mut r: AnalysisReport,
        verdict: Verdict,
        reason: Option<&str>,
        message: String,
    ) -> AnalysisReport {
        r.verdict = Some(verdict);
        r.reason = reason.map(str::to_owned);
        if verdict == Verdict::Refused {
            self.reporter
                .event(
                    true,
                    reason.unwrap_or(reasons::LOAD_FAILED),
                    &format!("{} refused: {message}", r.version),
                )
                .await;
        }
        self.update(&mut r, AnalysisPhase::Done, message).await;
        self.rejection = (verdict != Verdict::Passed).then(|| r.clone());
        r
    }

    async fn collect_garbage(&self, keep_versions: &[&str]) {
        let keep: Vec<&Path> = keep_versions
            .iter()
            .filter_map(|v| self.artifacts.get(*v).map(|(p, _)| p.as_path()))
            .collect();
        if keep.len() < keep_versions.len() {
            // A version to keep whose directory this run does not know (fetched before a
            // restart): removing "everything else" could remove it.
            return;
        }
        match fetch::gc(&self.models_dir, &keep).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    removed = removed.len(),
                    "removed artifacts no longer needed"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection of old artifacts failed"),
        }
    }
}
