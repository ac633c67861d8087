//! Whether the allocator gives a swapped-out version's memory back. glibc returns freed heap
//! memory to the system only above a trim threshold that it raises by itself each time a large
//! block is freed, so after the first swaps a long-running server keeps what they freed. A fixed
//! threshold (`MALLOC_TRIM_THRESHOLD_`, read by glibc at start; the operator sets it on the
//! runtime container to [`TRIM_THRESHOLD_BYTES`]) turns the raise off. Without it the runtime
//! says so once at start.

use kinfer_contract::pod::{TRIM_THRESHOLD_BYTES, env::MALLOC_TRIM_THRESHOLD};

/// Logs, when glibc's trim threshold is automatic for this process, how to fix it.
pub fn check_trim_threshold() {
    let fixed = std::env::var_os(MALLOC_TRIM_THRESHOLD).is_some();
    if !fixed && cfg!(all(target_os = "linux", target_env = "gnu")) {
        tracing::info!(
            "{MALLOC_TRIM_THRESHOLD} is not set: memory freed by swapped-out versions may stay \
             in the process (set {MALLOC_TRIM_THRESHOLD}={TRIM_THRESHOLD_BYTES}, as the operator does)"
        );
    }
}
