//! After the promotion: the analysis window against the previous version (kept loaded and
//! warm, answering a random fraction of live requests as the paired baseline), the replay of
//! recent requests on both versions when live traffic is too thin, the verdict, the rollback
//! (asked again until the runtime confirms it), and the analysis a killed watcher left
//! unfinished, judged again.

use std::time::Instant;

use kinfer_api::report::{AnalysisPhase, AnalysisReport, Verdict, reasons};

use super::{ADMIN_BACKOFF, Plan, ROLLBACK_DEADLINE, Stop, Watcher, stop, timed};
use crate::{
    admin::AdminError,
    analysis::{self, Figures, Judgement, Limits},
    metrics::Step,
    paired,
};

/// Times the split is asked for when its answer is lost (the call names its end state, so a
/// repeat is harmless).
const SPLIT_TRIES: u32 = 3;

impl Watcher {
    /// Judges again a version a killed watcher had promoted: the baseline is the previous
    /// version's figures up to the swap (it has had no traffic since), the window starts over.
    pub(super) async fn resume_analysis(
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

    pub(super) async fn analyse(
        &mut self,
        plan: &Plan,
        r: &mut AnalysisReport,
        old: &str,
        baseline: Option<&Figures>,
        promoted_at: Instant,
    ) -> Result<(), Stop> {
        let spec = &plan.rollout.analysis;
        let limits = Limits {
            spec: spec.clone(),
            p99_noise_floor: self.settings.p99_noise_floor,
        };
        // The paired baseline: the previous version answers a random fraction of live requests
        // for the whole analysis, so both are measured under the same load at the same moments.
        // A window of 0 asks for no analysis at all (the before/after judge then keeps the
        // version at once when minRequests is 0 too).
        let mut split = spec.baseline.fraction > 0.0
            && !spec.window.get().is_zero()
            && self.start_split(plan, old, r).await;
        let look_every = paired::look_every(spec);
        let mut next_look = look_every;
        let mut replay_asked = false;
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
            let elapsed = promoted_at.elapsed();
            let judgement = if split {
                match stats
                    .baseline
                    .as_ref()
                    .filter(|b| b.candidate.version == plan.name && b.baseline.version == old)
                {
                    Some(b) if elapsed < next_look => {
                        r.figures = Some(paired::figures(b, None));
                        continue;
                    }
                    Some(b) => {
                        next_look = elapsed + look_every;
                        let (j, look) = paired::judge(spec, b, elapsed);
                        r.figures = Some(paired::figures(b, Some(&look)));
                        let undecided =
                            matches!(j, Judgement::Wait(_) | Judgement::Inconclusive(_));
                        match (paired::replay_view(b), &spec.replay) {
                            (Some(replayed), Some(_)) if undecided => {
                                self.judge_replay(spec, &replayed, elapsed, r).unwrap_or(j)
                            }
                            (None, Some(rp))
                                if undecided
                                    && !replay_asked
                                    && elapsed >= spec.window.get()
                                    && elapsed < paired::max_window(spec) =>
                            {
                                replay_asked = self.start_replay(plan, rp, r).await;
                                j
                            }
                            _ => j,
                        }
                    }
                    None => {
                        // The split is gone without a change of version (the runtime lost it):
                        // start it again; its figures start over, the window does not.
                        split = self.start_split(plan, old, r).await;
                        replay_asked = false;
                        continue;
                    }
                }
            } else {
                let current = Figures::from_stats(&stats, &plan.name, false).unwrap_or_default();
                r.figures = Some(analysis::figures(baseline, &current));
                analysis::judge(&limits, baseline, &current, elapsed)
            };
            match judgement {
                Judgement::Wait(m) => {
                    if m != last_wait {
                        self.update(r, AnalysisPhase::Analysing, m.clone()).await;
                        last_wait = m;
                    }
                }
                Judgement::Pass(m) => {
                    self.stop_split(split).await;
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
                    let metrics = self.metrics.clone();
                    timed(&metrics, Step::Rollback, self.roll_back_to(old))
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
                Judgement::Inconclusive(m) => {
                    // No evidence either way within maxWindow: the version keeps serving here,
                    // and the verdict holds the rollout instead of passing it blindly.
                    self.stop_split(split).await;
                    r.verdict = Some(Verdict::Inconclusive);
                    r.reason = Some(reasons::ANALYSIS_INCONCLUSIVE.into());
                    let text = format!(
                        "{m}; {} keeps serving on this pod and the rollout holds",
                        plan.name
                    );
                    self.reporter
                        .event(
                            true,
                            reasons::ANALYSIS_INCONCLUSIVE,
                            &format!("{}: {text}", plan.name),
                        )
                        .await;
                    self.update(r, AnalysisPhase::Done, text).await;
                    self.rejection = Some(r.clone());
                    return Ok(());
                }
                Judgement::Fail { reason, message } => {
                    self.stop_split(split).await;
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

    /// The verdict of a split's replay, when it has one: its figures become the report's.
    fn judge_replay(
        &self,
        spec: &kinfer_api::inference_service::AnalysisSpec,
        replayed: &kinfer_contract::admin::BaselineSummary,
        elapsed: std::time::Duration,
        r: &mut AnalysisReport,
    ) -> Option<Judgement> {
        let (j, look) = paired::judge(spec, replayed, elapsed);
        let on = format!(
            "on {} recent requests replayed on both versions (live traffic too thin)",
            replayed.candidate.requests
        );
        let j = match j {
            Judgement::Pass(m) => Judgement::Pass(format!("{m}, {on}")),
            Judgement::Fail { reason, message } => Judgement::Fail {
                reason,
                message: format!("{message}, {on}"),
            },
            Judgement::Wait(_) | Judgement::Inconclusive(_) => return None,
        };
        let mut figures = paired::figures(replayed, Some(&look));
        figures.replayed = Some(replayed.candidate.requests as i64);
        r.figures = Some(figures);
        Some(j)
    }

    /// Asks the runtime to replay its kept requests on both versions; true when asked (a
    /// runtime that keeps none, or answered at all, is not asked again; a lost answer is).
    async fn start_replay(
        &mut self,
        plan: &Plan,
        rp: &kinfer_api::inference_service::ReplaySpec,
        r: &mut AnalysisReport,
    ) -> bool {
        let requests = u64::try_from(rp.max_requests).unwrap_or(0);
        let (asked, text) = match self.admin.replay(requests, rp.rate).await {
            Ok(a) if a.replay.queued == 0 => (
                true,
                format!(
                    "live traffic too thin for a verdict on {} and no recent requests kept to replay",
                    plan.name
                ),
            ),
            Ok(a) => (
                true,
                format!(
                    "live traffic too thin for a verdict on {}: replaying {} recent requests on both versions at {} per second",
                    plan.name, a.replay.queued, rp.rate
                ),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "no replay");
                (
                    e.status().is_some(),
                    format!("live traffic too thin for a verdict and no replay: {e}"),
                )
            }
        };
        self.update(r, AnalysisPhase::Analysing, text).await;
        asked
    }

    /// Asks the runtime to answer `baseline.fraction` of live requests with `old` (again after a
    /// lost answer, a few times). A runtime that refuses (an older one, `old` unloaded) leaves
    /// the before/after comparison, said in the report.
    async fn start_split(&mut self, plan: &Plan, old: &str, r: &mut AnalysisReport) -> bool {
        let b = &plan.rollout.analysis.baseline;
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match self.admin.baseline(old, b.fraction, b.pair_rate).await {
                Err(e) if e.status().is_none() && tries < SPLIT_TRIES => {
                    tracing::warn!(error = %e, tries, "no answer to the baseline call; asking again");
                    tokio::time::sleep(ADMIN_BACKOFF.delay(tries)).await;
                }
                other => break other,
            }
        };
        match answer {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "no paired baseline");
                self.update(
                    r,
                    AnalysisPhase::Analysing,
                    format!(
                        "the runtime did not split traffic with {old} ({e}); comparing {} with {old}'s figures from before the swap",
                        plan.name
                    ),
                )
                .await;
                false
            }
        }
    }

    /// Ends the split (the whole traffic goes to the serving version); a lost answer is
    /// harmless, the next change of version ends it too.
    async fn stop_split(&self, split: bool) {
        if split && let Err(e) = self.admin.baseline("", 0.0, 0.0).await {
            tracing::warn!(error = %e, "the paired baseline was not stopped");
        }
    }

    /// Makes `old` serve again and does not return before the runtime said so: a rollback
    /// whose request or answer was lost is asked again (rollback names its target, so a repeat
    /// is harmless), for up to [`ROLLBACK_DEADLINE`]. A runtime that restarted meanwhile and no
    /// longer holds `old` gets it staged again from its verified artifact.
    pub(super) async fn roll_back_to(&self, old: &str) -> Result<(), AdminError> {
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
}
