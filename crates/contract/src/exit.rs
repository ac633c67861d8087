//! Exit codes of kinfer's commands that another process reads: the verification Job's two checks
//! (`kinfer-watcher check`, `kinfer-runtime --check`), whose `podFailurePolicy` fails the Job at
//! once on [`REFUSED`], and the standalone `kinfer-watcher run`.

/// The check passed, or the version was kept after its analysis.
pub const OK: i32 = 0;
/// Something failed that may not fail again (a fetch, the runtime away): retried.
pub const RETRY: i32 = 1;
/// `kinfer-watcher run`: the version regressed and was rolled back.
pub const ROLLED_BACK: i32 = 2;
/// The artifact is refused: a property of the artifact, no retry helps.
pub const REFUSED: i32 = 3;
/// `kinfer-watcher run`: the version regressed and keeps serving (autoRollback off).
pub const REGRESSED: i32 = 4;
/// `kinfer-watcher run`: the analysis was inconclusive; the version keeps serving.
pub const INCONCLUSIVE: i32 = 5;
