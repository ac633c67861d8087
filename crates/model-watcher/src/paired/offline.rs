//! Judging recorded figures after the fact (`kinfer-watcher judge`): both judges on the same
//! runtime stats — the paired one on the split the stats carry, the before/after one on the
//! candidate's figures against the previous version's from a snapshot taken before the swap.
//! What the verdict-quality benchmark compares, and what a user can run on saved stats to see
//! what an analysis would have said.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use kinfer_api::inference_service::AnalysisSpec;
use kinfer_contract::admin::StatsAnswer;
use serde::Serialize;

use crate::analysis::{self, Figures, Judgement, Limits};

/// One judge's answer, as JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// `Wait`, `Pass`, `Fail` or `Inconclusive`.
    pub outcome: &'static str,
    /// For a failure, the reason (`LatencyRegression`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What the judge said.
    pub message: String,
}

impl From<Judgement> for Answer {
    fn from(j: Judgement) -> Self {
        let (outcome, reason, message) = match j {
            Judgement::Wait(m) => ("Wait", None, m),
            Judgement::Pass(m) => ("Pass", None, m),
            Judgement::Inconclusive(m) => ("Inconclusive", None, m),
            Judgement::Fail { reason, message } => ("Fail", Some(reason), message),
        };
        Self {
            outcome,
            reason,
            message,
        }
    }
}

/// Both judges' answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Answers {
    /// The paired judge (absent when the stats carry no split of `version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paired: Option<Answer>,
    /// The before/after judge.
    pub before_after: Answer,
}

/// Judges `version` in `now`, `elapsed` after its promotion; `before` is the stats snapshot
/// taken just before the swap (the before/after judge's baseline is `previous` in it).
pub fn judge_recorded(
    spec: &AnalysisSpec,
    p99_noise_floor: Duration,
    before: &StatsAnswer,
    now: &StatsAnswer,
    version: &str,
    previous: &str,
    elapsed: Duration,
) -> Answers {
    let paired = now
        .baseline
        .as_ref()
        .filter(|b| b.candidate.version == version && b.baseline.version == previous)
        .map(|b| super::judge(spec, b, elapsed).0.into());
    let baseline = Figures::from_stats(before, previous, true);
    let current = Figures::from_stats(now, version, false).unwrap_or_default();
    let limits = Limits {
        spec: spec.clone(),
        p99_noise_floor,
    };
    Answers {
        paired,
        before_after: analysis::judge(&limits, baseline.as_ref(), &current, elapsed).into(),
    }
}

/// Why saved stats could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a stats answer.
    #[error("{path} is not the JSON of GET /admin/stats: {source}")]
    Stats {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The analysis settings are not an `analysis` object.
    #[error("--analysis is not an InferenceService rollout.analysis object: {0}")]
    Analysis(#[source] serde_json::Error),
}

fn read(path: &Path) -> Result<StatsAnswer, OfflineError> {
    let text = std::fs::read_to_string(path).map_err(|source| OfflineError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| OfflineError::Stats {
        path: path.to_owned(),
        source,
    })
}

/// [`judge_recorded`] on saved stats files and `analysis` as the CRD's JSON.
pub fn judge_files(
    analysis: &str,
    p99_noise_floor: Duration,
    before: &Path,
    now: &Path,
    version: &str,
    previous: &str,
    elapsed: Duration,
) -> Result<Answers, OfflineError> {
    let spec: AnalysisSpec = serde_json::from_str(analysis).map_err(OfflineError::Analysis)?;
    Ok(judge_recorded(
        &spec,
        p99_noise_floor,
        &read(before)?,
        &read(now)?,
        version,
        previous,
        elapsed,
    ))
}
