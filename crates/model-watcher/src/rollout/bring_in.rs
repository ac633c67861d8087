//! A version's way in, up to its promotion: fetch into the shared volume (retrying while the
//! store is away), signature check, stage in the runtime, golden-set gate, shadow traffic.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use kinfer_api::report::{AnalysisPhase, AnalysisReport, GateFigures, Verdict, reasons};
use kinfer_contract::{admin::Conflict, backoff::Backoff};

use super::{MODEL_FILE, Plan, Stop, Watcher, stop, timed};
use crate::{
    analysis::Figures,
    fetch::{self, Fetched, S3Uri},
    metrics::Step,
    signature,
};

impl Watcher {
    pub(super) async fn fetch(&self, plan: &Plan, r: &mut AnalysisReport) -> Result<Fetched, Stop> {
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
            let max = self.settings.max_artifact_bytes;
            match fetch::fetch_at_most(
                &client,
                &uri,
                &self.models_dir,
                self.settings.fetch_retry,
                max,
            )
            .await
            {
                Ok(f) => {
                    if !f.cached {
                        self.metrics.fetched(f.bytes);
                    }
                    return Ok(f);
                }
                // A property of the artifact: no retry helps.
                Err(e @ fetch::FetchError::TooLarge { .. }) => {
                    return Err(stop(reasons::ARTIFACT_TOO_LARGE, e.to_string()));
                }
                Err(e) => {
                    self.metrics.fetch_failed();
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

    pub(super) async fn bring_in(
        &mut self,
        plan: &Plan,
        r: &mut AnalysisReport,
        serving: Option<&str>,
    ) -> Result<(), Stop> {
        let metrics = self.metrics.clone();
        let fetched = timed(&metrics, Step::Fetch, self.fetch(plan, r)).await?;
        r.digest = Some(fetched.digest.clone());
        if let Some(pinned) = &plan.digest
            && *pinned != fetched.digest
        {
            // The directory is left to garbage collection: another version may use the same bytes.
            return Err(stop(
                reasons::ARTIFACT_CHANGED,
                format!(
                    "{} now holds {} but its verification recorded {pinned}: the artifact changed \
                     after it was verified and is not served; put the verified bytes back, or \
                     publish the new ones as a new ModelVersion",
                    plan.spec.source.uri, fetched.digest
                ),
            ));
        }
        r.reason = None;
        self.update(
            r,
            AnalysisPhase::Verifying,
            format!("checking the signature of {}", fetched.digest),
        )
        .await;
        let dir = fetched.dir.clone();
        // Hashing a large model belongs off the async threads.
        let verify = tokio::task::spawn_blocking({
            let (plan, dir) = (plan.clone(), dir.clone());
            move || verify_artifact(&plan, &dir)
        });
        let signer = timed(&metrics, Step::Verify, verify)
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
        let model = dir.join(MODEL_FILE);
        let stage = self.admin.stage(&plan.name, &model, Some(&fetched.digest));
        match timed(&metrics, Step::Stage, stage).await {
            Ok(_) => {}
            // Staged before with these very bytes (a watcher restart): nothing to do.
            Err(e) if e.conflict() == Some(Conflict::AlreadyLoaded) => {}
            Err(e) => return Err(stop(reasons::LOAD_FAILED, e.to_string())),
        }
        self.artifacts
            .insert(plan.name.clone(), (dir.clone(), fetched.digest.clone()));

        // The optional steps are timed (and traced) only when the plan has them.
        let gate = if plan.spec.validation.is_some() {
            timed(&metrics, Step::Gate, self.gate(plan, r, &dir)).await
        } else {
            Ok(())
        };
        let shadow = match gate {
            Ok(()) if plan.rollout.shadow.is_some() => {
                timed(&metrics, Step::Shadow, self.shadow(plan, r)).await
            }
            other => other,
        };
        if let Err(s) = shadow {
            let _ = self.admin.unload(&plan.name).await;
            return Err(s);
        }

        let promote = async {
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
            Ok::<_, Stop>(baseline)
        };
        let baseline = timed(&metrics, Step::Promote, promote).await?;
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
        let analysis = self.analyse(plan, r, old, baseline.as_ref(), promoted_at);
        timed(&metrics, Step::Analysis, analysis).await
    }

    pub(super) async fn gate(
        &self,
        plan: &Plan,
        r: &mut AnalysisReport,
        dir: &Path,
    ) -> Result<(), Stop> {
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

    pub(super) async fn shadow(&self, plan: &Plan, r: &mut AnalysisReport) -> Result<(), Stop> {
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
