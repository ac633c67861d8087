//! The budget of request bytes in flight: every request holds permits for its message bytes as
//! they arrive and for its decoded tensors, until it has been answered. Past the budget a
//! request is refused at once (503 with `Retry-After` / RESOURCE_EXHAUSTED) instead of being
//! read, so a flood of large bodies cannot exhaust the pod's memory.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use tokio::sync::Semaphore;

use crate::error::InferError;

/// The server's budget (`--max-inflight-bytes`).
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held by requests now.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.sem.available_permits())
    }

    /// Refuses at once a request of `bytes` that the budget cannot hold now (before any of it is
    /// read); the bytes are charged only as they arrive.
    pub fn fits(&self, bytes: usize) -> Result<(), InferError> {
        if bytes > self.sem.available_permits() {
            return Err(self.over(bytes));
        }
        Ok(())
    }

    fn over(&self, bytes: usize) -> InferError {
        InferError::Overloaded(format!(
            "{} request bytes are in flight and {bytes} more would exceed the budget of {} bytes (--max-inflight-bytes); retry shortly",
            self.in_use(),
            self.total
        ))
    }

    /// An empty charge for one request.
    pub fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            held: AtomicUsize::new(0),
        }
    }
}

/// The bytes one request holds; released when it is dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Budget,
    held: AtomicUsize,
}

impl Charge {
    /// Takes `bytes` more from the budget, or refuses the request.
    pub fn add(&self, bytes: usize) -> Result<(), InferError> {
        if bytes == 0 {
            return Ok(());
        }
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.budget.sem.try_acquire_many(n).ok());
        match permit {
            Some(p) => {
                p.forget();
                self.held.fetch_add(bytes, Relaxed);
                Ok(())
            }
            None => Err(self.budget.over(bytes)),
        }
    }

    /// Bytes this request holds.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let n = *self.held.get_mut();
        if n > 0 {
            self.budget.sem.add_permits(n);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_budget_and_released_on_drop() {
        let b = Budget::new(100);
        let c1 = b.charge();
        c1.add(60).unwrap();
        let c2 = b.charge();
        let e = c2.add(50).unwrap_err().to_string();
        assert!(e.contains("exceed the budget of 100 bytes"), "{e}");
        assert!(matches!(c2.add(50), Err(InferError::Overloaded(_))));
        c2.add(40).unwrap();
        assert_eq!((b.in_use(), c1.held(), c2.held()), (100, 60, 40));
        drop(c1);
        assert_eq!(b.in_use(), 40);
        drop(c2);
        assert_eq!(b.in_use(), 0);
        assert!(b.charge().add(usize::MAX).is_err());
        assert!(b.fits(100).is_ok() && b.fits(101).is_err());
    }
}
