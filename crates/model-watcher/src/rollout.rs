//! One version's way into service in this pod: fetch → verify → stage → golden-set gate →
//! (shadow) → baseline → promote → analysis → keep or roll back, reported at every step.
//!
//! The [`Watcher`] owns what this pod's runtime serves as far as the watcher knows it, the
//! verified artifact directory of each version, and the [`Reporter`] that tells the world
//! (pod annotations, condition and Events in a cluster; JSON lines on stdout standalone).
//! Decisions are the pure functions of [`crate::analysis`]; everything here is I/O and order.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kinfer_api::{
    inference_service::RolloutSpec,
    model_version::ModelVersionSpec,
    report::{AnalysisPhase, AnalysisReport, GateFigures, Verdict, reasons},
};

use kinfer_contract::{admin::Conflict, backoff::Backoff};

use crate::{
    admin::{AdminClient, AdminError},
    analysis::{self, Figures, Judgement, Limits},
    fetch::{self, Fetched, Retry, S3Uri},
    report::Reporter,
    signature::{self, TrustedKey},
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            p99_noise_floor: Duration::from_micros(250),
            fetch_retry: Retry::default(),
            fetch_deadline: None,
            fetch_backoff_max: Duration::from_secs(60),
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

    /// Learns what the runtime serves (at start, and after the runtime restarted).
    pub async fn sync(&mut self) -> Result<Option<String>, AdminError> {
        Ok(self.admin.stats().await?.serving)
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
    /// report (phase `Done`).
    pub async fn apply(&mut self, plan: &Plan) -> AnalysisReport {
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
            // Sent back here after a refusal or rollback: that report stays the pod's answer.
            if let Some(rej) = &self.rejection
                && rej.previous_version.as_deref() == Some(plan.name.as_str())
            {
                return rej.clone();
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

    /// Judges again a version a killed watcher had promoted: the baseline is the previous
    /// version's figures up to the swap (it has had no traffic since), the window starts over.
    async fn resume_analysis(
        &mut self,
        plan: &Plan,
        mut r: AnalysisReport,
        old: &str,
        runtime: &kinfer_contract::admin::StatsAnswer,
    ) -> AnalysisReport {
        let baseline = Figures::from_stats(runtime, old, false);
        r.previous_version = Some(old.to_owned());
        r.verdict = None;
        r.reason = None;
        self.reporter
            .serving(
                Some(&plan.name),
                true,
                "Serving",
                &format!("{} serves; its analysis is judged again", plan.name),
            )
            .await;
        self.update(
            &mut r,
            AnalysisPhase::Analysing,
            format!(
                "the watcher restarted during the analysis of {}: judging it again against {old}, the window starts over",
                plan.name
            ),
        )
        .await;
        match self
            .analyse(plan, &mut r, old, baseline.as_ref(), Instant::now())
            .await
        {
            Ok(()) => r,
            Err(s) => {
                self.done(r, Verdict::RolledBack, Some(s.reason), s.message)
                    .await
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

    async fn fetch(&self, plan: &Plan, r: &mut AnalysisReport) -> Result<Fetched, Stop> {
        let uri: S3Uri = plan
            .spec
            .source
            .uri
            .parse()
            .map_err(|e: fetch::FetchError| stop(reasons::FETCH_FAILED, e.to_string()))?;
        let src = &plan.spec.source;
        let client = fetch::client(
            src.endpoint.as_deref(),
            src.region.as_deref().unwrap_or("us-east-1"),
            plan.credentials
                .as_ref()
                .map(|(a, s)| (a.as_str(), s.as_str())),
        )
        .await;
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut last_error = String::new();
        loop {
            attempt += 1;
            self.update(
                r,
                AnalysisPhase::Fetching,
                format!("downloading {} (attempt {attempt})", src.uri),
            )
            .await;
            match fetch::fetch(&client, &uri, &self.models_dir, self.settings.fetch_retry).await {
                Ok(f) => return Ok(f),
                Err(e) => {
                    let msg = format!("{e}; the current version keeps serving, retrying");
                    tracing::warn!(version = %plan.name, attempt, error = %e, "fetch failed");
                    if msg != last_error {
                        self.reporter
                            .event(
                                true,
                                reasons::FETCH_FAILED,
                                &format!("{}: {msg}", plan.name),
                            )
                            .await;
                        last_error = msg.clone();
                    }
                    r.reason = Some(reasons::FETCH_FAILED.into());
                    self.update(r, AnalysisPhase::Fetching, msg).await;
                    if let Some(d) = self.settings.fetch_deadline
                        && started.elapsed() >= d
                    {
                        return Err(stop(
                            reasons::FETCH_FAILED,
                            format!(
                                "gave up after {attempt} attempts in {:.0} s: {e}",
                                started.elapsed().as_secs_f64()
                            ),
                        ));
                    }
                    let pause =
                        Backoff::new(Duration::from_secs(2), self.settings.fetch_backoff_max)
                            .delay(attempt);
                    tokio::time::sleep(pause).await;
                    r.reason = None;
                }
            }
        }
    }

    async fn bring_in(
        &mut self,
        plan: &Plan,
        r: &mut AnalysisReport,
        serving: Option<&str>,
    ) -> Result<(), Stop> {
        let fetched = self.fetch(plan, r).await?;
        r.digest = Some(fetched.digest.clone());
        r.reason = None;
        self.update(
            r,
            AnalysisPhase::Verifying,
            format!("checking the signature of {}", fetched.digest),
        )
        .await;
        let dir = fetched.dir.clone();
        // Hashing a large model belongs off the async threads.
        let signer = tokio::task::spawn_blocking({
            let (plan, dir) = (plan.clone(), dir.clone());
            move || verify_artifact(&plan, &dir)
        })
        .await
        .map_err(|e| stop(reasons::SIGNATURE_INVALID, e.to_string()))?
        .map_err(|(reason, message)| stop(reason, message))?;
        match &signer {
            Some(s) => r.signer = Some(s.clone()),
            None => {
                self.reporter
                    .event(
                        true,
                        reasons::UNSIGNED,
                        &format!(
                            "{} is served without a verified signature (signature.required: false)",
                            plan.name
                        ),
                    )
                    .await
            }
        }

        self.update(r, AnalysisPhase::Validating, "staging in the runtime")
            .await;
        match self
            .admin
            .stage(&plan.name, &dir.join(MODEL_FILE), Some(&fetched.digest))
            .await
        {
            Ok(_) => {}
            // Staged before with these very bytes (a watcher restart): nothing to do.
            Err(e) if e.conflict() == Some(Conflict::AlreadyLoaded) => {}
            Err(e) => return Err(stop(reasons::LOAD_FAILED, e.to_string())),
        }
        self.artifacts
            .insert(plan.name.clone(), (dir.clone(), fetched.digest.clone()));

        if let Err(s) = self.gate(plan, r, &dir).await {
            let _ = self.admin.unload(&plan.name).await;
            return Err(s);
        }
        if let Err(s) = self.shadow(plan, r).await {
            let _ = self.admin.unload(&plan.name).await;
            return Err(s);
        }

        // Baseline: the serving version's figures just before the swap.
        let before = self
            .admin
            .stats()
            .await
            .map_err(|e| stop(reasons::LOAD_FAILED, e.to_string()))?;
        let baseline = serving.and_then(|v| Figures::from_stats(&before, v, true));
        self.admin
            .serve(&plan.name)
            .await
            .map_err(|e| stop(reasons::LOAD_FAILED, e.to_string()))?;
        let promoted_at = Instant::now();
        self.serving = Some(plan.name.clone());
        let msg = match serving {
            Some(old) => format!(
                "{} serves; {old} stays warm until the analysis verdict",
                plan.name
            ),
            None => format!("{} serves", plan.name),
        };
        self.reporter.event(false, reasons::PROMOTED, &msg).await;
        self.reporter
            .serving(Some(&plan.name), true, "Serving", &msg)
            .await;

        let Some(old) = serving else {
            // The first version of this pod: nothing to compare with or go back to.
            r.verdict = Some(Verdict::Passed);
            self.update(r, AnalysisPhase::Done, msg).await;
            self.collect_garbage(&[&plan.name]).await;
            return Ok(());
        };
        self.update(r, AnalysisPhase::Analysing, msg).await;
        self.analyse(plan, r, old, baseline.as_ref(), promoted_at)
            .await
    }

    async fn gate(&self, plan: &Plan, r: &mut AnalysisReport, dir: &Path) -> Result<(), Stop> {
        let Some(v) = &plan.spec.validation else {
            return Ok(());
        };
        let golden = dir.join(&v.golden_set);
        if !golden.exists() {
            return Err(stop(
                reasons::NUMERICAL_MISMATCH,
                format!(
                    "the golden set {:?} named by validation.goldenSet is not in the artifact",
                    v.golden_set
                ),
            ));
        }
        self.update(
            r,
            AnalysisPhase::Validating,
            format!("running the golden set {}", v.golden_set),
        )
        .await;
        let e = self
            .admin
            .evaluate(&plan.name, &golden, v.atol, v.rtol)
            .await
            .map_err(|e| stop(reasons::NUMERICAL_MISMATCH, e.to_string()))?;
        let g = GateFigures {
            samples: e.samples,
            max_abs_error: e.max_abs_error,
            max_rel_error: e.max_rel_error,
            agreement: e.agreement,
        };
        let within = e.within_tolerance;
        let text = format!(
            "{} samples: max abs error {:.3e}, max rel error {:.3e}, agreement {:.4} (atol {}, rtol {}, minAgreement {})",
            g.samples,
            g.max_abs_error,
            g.max_rel_error,
            g.agreement,
            v.atol,
            v.rtol,
            v.min_agreement
        );
        let ok = within && g.agreement >= v.min_agreement;
        r.gate = Some(g);
        if ok {
            Ok(())
        } else {
            Err(stop(
                reasons::NUMERICAL_MISMATCH,
                format!("golden set mismatch: {text}"),
            ))
        }
    }

    async fn shadow(&self, plan: &Plan, r: &mut AnalysisReport) -> Result<(), Stop> {
        let Some(s) = &plan.rollout.shadow else {
            return Ok(());
        };
        self.admin
            .shadow(&plan.name, s.sample_rate)
            .await
            .map_err(|e| stop(reasons::SHADOW_DISAGREEMENT, e.to_string()))?;
        self.update(
            r,
            AnalysisPhase::Shadowing,
            format!(
                "mirroring {:.0}% of live traffic for {}",
                s.sample_rate * 100.0,
                s.duration.as_str()
            ),
        )
        .await;
        tokio::time::sleep(s.duration.get()).await;
        let summary = self
            .admin
            .shadow(&plan.name, 0.0)
            .await
            .map_err(|e| stop(reasons::SHADOW_DISAGREEMENT, e.to_string()))?;
        let (compared, agreement) = summary
            .stopped
            .map(|s| (s.compared, s.agreement))
            .unwrap_or((0, None));
        r.shadow_agreement = agreement;
        match agreement {
            Some(a) if a < s.min_agreement => Err(stop(
                reasons::SHADOW_DISAGREEMENT,
                format!(
                    "shadow agreement {a:.4} over {compared} mirrored requests is below minAgreement {}",
                    s.min_agreement
                ),
            )),
            Some(_) => Ok(()),
            None => {
                tracing::warn!(version = %plan.name, "no live traffic was mirrored; shadow check skipped");
                Ok(())
            }
        }
    }

    async fn analyse(
        &mut self,
        plan: &Plan,
        r: &mut AnalysisReport,
        old: &str,
        baseline: Option<&Figures>,
        promoted_at: Instant,
    ) -> Result<(), Stop> {
        let limits = Limits {
            spec: plan.rollout.analysis.clone(),
            p99_noise_floor: self.settings.p99_noise_floor,
        };
        let mut last_wait = String::new();
        loop {
            tokio::time::sleep(self.settings.poll).await;
            let stats = match self.admin.stats().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "runtime unavailable during analysis");
                    continue;
                }
            };
            if !stats.versions.contains_key(&plan.name) {
                // The runtime restarted (its container was killed) and lost the candidate: it
                // counts as failed, and the last judged version serves again.
                self.serving = Some(old.to_owned());
                let restored = match self.serve_verified(old).await {
                    Ok(true) => format!("; {old} restored from its verified artifact"),
                    Ok(false) => format!("; {old} serves when its artifact is fetched again"),
                    Err(e) => format!("; restoring {old} failed for now: {e}"),
                };
                let text = format!(
                    "the runtime restarted during the analysis of {} and lost it{restored}",
                    plan.name
                );
                self.reporter
                    .event(true, reasons::RUNTIME_CRASHED, &text)
                    .await;
                self.reporter
                    .event(
                        true,
                        reasons::ROLLED_BACK,
                        &format!("{} rolled back to {old}: {text}", plan.name),
                    )
                    .await;
                if stats.serving.as_deref() == Some(old) || restored.contains("restored") {
                    self.reporter
                        .serving(Some(old), true, "Serving", &format!("{old} serves again"))
                        .await;
                }
                return Err(stop(reasons::RUNTIME_CRASHED, text));
            }
            if stats.serving.as_deref() != Some(plan.name.as_str()) {
                self.serving = stats.serving.clone();
                return Err(stop(
                    reasons::LOAD_FAILED,
                    format!(
                        "the runtime no longer serves {} (changed by hand) during the analysis",
                        plan.name
                    ),
                ));
            }
            let current = Figures::from_stats(&stats, &plan.name, false).unwrap_or_default();
            r.figures = Some(analysis::figures(baseline, &current));
            match analysis::judge(&limits, baseline, &current, promoted_at.elapsed()) {
                Judgement::Wait(m) => {
                    if m != last_wait {
                        self.update(r, AnalysisPhase::Analysing, m.clone()).await;
                        last_wait = m;
                    }
                }
                Judgement::Pass(m) => {
                    r.verdict = Some(Verdict::Passed);
                    self.reporter
                        .event(
                            false,
                            reasons::ANALYSIS_PASSED,
                            &format!("{}: {m}", plan.name),
                        )
                        .await;
                    self.update(r, AnalysisPhase::Done, m).await;
                    self.rejection = None;
                    self.collect_garbage(&[&plan.name, old]).await;
                    return Ok(());
                }
                Judgement::Fail { reason, message } if plan.rollout.auto_rollback => {
                    let t = Instant::now();
                    self.roll_back_to(old)
                        .await
                        .map_err(|e| stop(reason, format!("{message}; rollback failed: {e}")))?;
                    let took = t.elapsed();
                    self.serving = Some(old.to_owned());
                    let _ = self.admin.unload(&plan.name).await;
                    let text = format!(
                        "{message}; rolled back to {old} in {:.1} ms",
                        took.as_secs_f64() * 1e3
                    );
                    tracing::warn!(version = %plan.name, %reason, %text, "rolled back");
                    self.reporter
                        .event(true, reason, &format!("{}: {message}", plan.name))
                        .await;
                    self.reporter
                        .event(
                            true,
                            reasons::ROLLED_BACK,
                            &format!("{} rolled back to {old}: {message}", plan.name),
                        )
                        .await;
                    self.reporter
                        .serving(
                            Some(old),
                            true,
                            "Serving",
                            &format!("{old} serves again after {} was rolled back", plan.name),
                        )
                        .await;
                    return Err(stop(reason, text));
                }
                Judgement::Fail { reason, message } => {
                    // A regression, judged: it stays (autoRollback is off), and the verdict says
                    // it regressed so the rollout stops instead of promoting it further.
                    r.verdict = Some(Verdict::Regressed);
                    r.reason = Some(reason.into());
                    let text = format!(
                        "{message}; autoRollback is off, {} keeps serving on this pod and the rollout stops",
                        plan.name
                    );
                    self.reporter.event(true, reason, &text).await;
                    self.update(r, AnalysisPhase::Done, text.clone()).await;
                    self.rejection = Some(r.clone());
                    return Ok(());
                }
            }
        }
    }

    /// Makes `old` serve again and does not return before the runtime said so: a rollback
    /// whose request or answer was lost is asked again (rollback names its target, so a repeat
    /// is harmless), for up to [`ROLLBACK_DEADLINE`]. A runtime that restarted meanwhile and no
    /// longer holds `old` gets it staged again from its verified artifact.
    async fn roll_back_to(&self, old: &str) -> Result<(), AdminError> {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let e = match self.admin.rollback(old).await {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(404) => {
                    return match self.serve_verified(old).await {
                        Ok(true) => Ok(()),
                        Ok(false) | Err(_) => Err(e),
                    };
                }
                Err(e @ AdminError::Refused { .. }) => return Err(e),
                Err(e) => e,
            };
            failures += 1;
            if started.elapsed() >= ROLLBACK_DEADLINE {
                return Err(e);
            }
            tracing::warn!(error = %e, failures, "no answer to the rollback; asking again");
            tokio::time::sleep(ADMIN_BACKOFF.delay(failures)).await;
        }
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

/// Checks an artifact directory against the plan's signature policy. Returns the signer's key
/// fingerprint (`sha256:…`), `None` when unsigned and allowed, or (reason, message).
pub fn verify_artifact(plan: &Plan, dir: &Path) -> Result<Option<String>, (&'static str, String)> {
    let sig = &plan.spec.signature;
    let bundle = dir.join(&sig.bundle);
    if !bundle.exists() {
        if sig.required {
            return Err((
                reasons::SIGNATURE_INVALID,
                format!(
                    "the artifact has no signature bundle {:?} and the ModelVersion requires one (signature.required)",
                    sig.bundle
                ),
            ));
        }
        return Ok(None);
    }
    if plan.keys.is_empty() {
        if sig.required {
            return Err((
                reasons::SIGNATURE_INVALID,
                "no trusted public keys: set signature.trustedKeys on the ModelVersion".into(),
            ));
        }
        return Ok(None);
    }
    // A bundle that is present is checked even when signatures are optional: a bad signature is
    // never accepted, only a missing one.
    signature::verify_dir(dir, &bundle, &plan.keys)
        .map(|v| Some(format!("sha256:{}", v.key_fingerprint)))
        .map_err(|e| (reasons::SIGNATURE_INVALID, format!("{}: {e}", e.reason())))
}
