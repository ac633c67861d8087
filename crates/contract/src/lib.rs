//! The contract between kinfer's processes, as types both sides serialise: what crosses the
//! runtime's admin socket between the model-watcher and the runtime ([`admin`]), the
//! verification Job's check results ([`check`]), exit codes ([`exit`]), Event and condition
//! reasons ([`reasons`]) and durations as written in flags and manifests ([`duration`]). A field renamed
//! on one side fails to compile on the other, and a field the producer stops sending fails to
//! parse instead of reading as zero.
//!
//! No Kubernetes dependency: the runtime links this crate and nothing of kube.

pub mod admin;
pub mod check;
pub mod duration;
pub mod exit;
pub mod reasons;
