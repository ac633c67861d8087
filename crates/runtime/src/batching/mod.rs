//! Dynamic batching: the bounded queue of each loaded version and the workers that drain it.
//!
//! A worker owns one [`Executor`] (an ONNX Runtime session: `ort`'s `Session::run` takes
//! `&mut self`, so sessions are never shared) and forms batches only from requests that can be
//! stacked: the same inputs, datatypes and dimensions after the first (the *shape signature*).
//! A request that cannot join waits for a batch of its own, so clients never see each other's
//! rows. By default a worker batches what queued while it was busy and adds no delay;
//! `max_delay` trades latency for fuller batches. A batch that fails is retried one request at a
//! time, so one bad request fails alone.
//!
//! Nothing here knows ONNX Runtime: the rules are unit-tested with a plain executor.

pub mod batcher;
pub mod queue;

use std::time::Duration;

use crate::tensor::Tensor;

/// Runs a model on one set of inputs (already in the model's input order).
pub trait Executor: Send + 'static {
    /// Runs the inputs; the outputs come back in the model's output order.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String>;
}

/// How a version's requests are queued and batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Largest batch in rows; 1 runs every request alone.
    pub max_batch: usize,
    /// Longest a batch waits to fill once its first request is taken; zero takes only what is
    /// already queued.
    pub max_delay: Duration,
    /// Requests that may wait; one more is refused at once.
    pub queue_capacity: usize,
}

/// A request's answer from a worker.
#[derive(Debug)]
pub struct RunOutput {
    /// All outputs of the model for this request's rows.
    pub outputs: Vec<Tensor>,
    /// Time in the queue.
    pub queue: Duration,
    /// Time in the run that answered it (shared by its batch).
    pub compute: Duration,
    /// Rows of the batch it ran in.
    pub batch_rows: usize,
}
