//! The contract between kinfer's processes, as types both sides serialise: what crosses the
//! runtime's admin socket between the model-watcher and the runtime ([`admin`]). A field renamed
//! on one side fails to compile on the other, and a field the producer stops sending fails to
//! parse instead of reading as zero.
//!
//! No Kubernetes dependency: the runtime links this crate and nothing of kube.

pub mod admin;
pub mod exit;
