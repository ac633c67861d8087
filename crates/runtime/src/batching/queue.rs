//! The queue in front of a version's workers: a bounded channel of [`Job`]s. Submitting never
//! waits: a full queue is an immediate overload answer, a closed one (the version unloaded) an
//! unavailable one.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::RunOutput;
use crate::{error::InferError, tensor::Tensor};

/// A queued request.
pub struct Job {
    /// Validated inputs, in the order of the model's inputs.
    pub inputs: Vec<Tensor>,
    /// Rows in dimension 0 (1 for a model that does not batch).
    pub rows: usize,
    /// When the request must be answered by.
    pub deadline: Option<Instant>,
    /// When it entered the queue.
    pub enqueued: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<RunOutput, InferError>>,
}

impl Job {
    /// Whether `other` can be stacked with this job along dimension 0: the same number of
    /// inputs, each with the same datatype, rank and dimensions after the first.
    pub fn joins(&self, other: &Job) -> bool {
        self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                a.dtype == b.dtype
                    && a.shape.len() == b.shape.len()
                    && a.shape.get(1..) == b.shape.get(1..)
            })
    }

    /// Whether the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Answers the request.
    pub fn answer(self, result: Result<RunOutput, InferError>) {
        // The caller may have gone (client disconnected): nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// The sending side of a version's queue.
pub struct Queue {
    tx: Sender<Job>,
    capacity: usize,
    label: String,
}

/// A bounded queue of `capacity` jobs; `label` names the version in overload messages.
pub fn bounded(capacity: usize, label: String) -> (Queue, Receiver<Job>) {
    let capacity = capacity.max(1);
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        Queue {
            tx,
            capacity,
            label,
        },
        rx,
    )
}

impl Queue {
    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Queues a validated request and waits for its answer.
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<RunOutput, InferError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(InferError::Overloaded(format!(
                    "{} has {} requests queued (the limit, --queue-capacity); retry shortly",
                    self.label, self.capacity
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(InferError::Unavailable(format!(
                    "{} is unloading",
                    self.label
                )));
            }
        }
        rx.await
            .map_err(|_| InferError::Internal(format!("{} stopped before answering", self.label)))?
    }
}
