//! The replay ring: copies of the inputs of a sampled fraction of recent live requests, bounded
//! by a count and by bytes (the oldest go first), kept in memory only: no API answers them and
//! nothing writes them out. An analysis whose live traffic is too thin to reach a verdict runs
//! them on both versions of its split (`POST /admin/replay`). Off unless `--replay-requests` is
//! set; then a request pays one draw, and a sampled one a copy of its inputs and a short lock.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use super::baseline::Draws;
use crate::tensor::Tensor;

/// One kept request: its inputs in the model's order, already checked against the version that
/// served it.
#[derive(Debug)]
pub struct Kept {
    /// The inputs.
    pub inputs: Vec<Tensor>,
    /// Rows of the batch dimension.
    pub rows: usize,
    bytes: usize,
}

/// Bytes a copy of these inputs holds (data, shapes, names and the tensors themselves).
fn footprint(inputs: &[Tensor]) -> usize {
    inputs
        .iter()
        .map(|t| {
            std::mem::size_of::<Tensor>()
                + t.data.len()
                + t.name.len()
                + t.shape.len() * std::mem::size_of::<i64>()
        })
        .sum::<usize>()
        + std::mem::size_of::<Kept>()
}

#[derive(Default)]
struct Held {
    entries: VecDeque<Arc<Kept>>,
    bytes: usize,
}

/// The ring.
pub struct Ring {
    max_requests: usize,
    max_bytes: usize,
    sample_rate: f64,
    draws: Draws,
    held: Mutex<Held>,
}

impl Ring {
    /// A ring of at most `max_requests` requests and `max_bytes` bytes keeping `sample_rate` of
    /// the requests offered.
    pub fn new(max_requests: usize, max_bytes: usize, sample_rate: f64) -> Self {
        Self {
            max_requests,
            max_bytes,
            sample_rate: sample_rate.clamp(0.0, 1.0),
            draws: Draws::new(),
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic elsewhere while holding the lock leaves whole entries: keep using them.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a copy of a live request's inputs when it is sampled and fits at all.
    pub fn offer(&self, inputs: &[Tensor], rows: usize) {
        if self.max_requests == 0 || self.draws.uniform() >= self.sample_rate {
            return;
        }
        let bytes = footprint(inputs);
        if bytes > self.max_bytes {
            return;
        }
        let kept = Arc::new(Kept {
            inputs: inputs.to_vec(),
            rows,
            bytes,
        });
        let mut h = self.held();
        while !h.entries.is_empty()
            && (h.entries.len() >= self.max_requests || h.bytes + bytes > self.max_bytes)
        {
            if let Some(old) = h.entries.pop_front() {
                h.bytes -= old.bytes;
            }
        }
        h.bytes += bytes;
        h.entries.push_back(kept);
    }

    /// Up to `n` of the most recent requests, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Kept>> {
        self.held().entries.iter().rev().take(n).cloned().collect()
    }

    /// Requests held.
    pub fn len(&self) -> usize {
        self.held().entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.held().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn request(i: u8, len: usize) -> Vec<Tensor> {
        vec![Tensor {
            name: "x".into(),
            dtype: DataType::Uint8,
            shape: vec![1, len as i64],
            data: vec![i; len],
        }]
    }

    #[test]
    fn keeps_the_newest_within_the_count_and_the_bytes() {
        let r = Ring::new(3, 1 << 20, 1.0);
        for i in 0..5 {
            r.offer(&request(i, 10), 1);
        }
        let firsts: Vec<u8> = r.recent(10).iter().map(|k| k.inputs[0].data[0]).collect();
        assert_eq!(firsts, vec![4, 3, 2]);
        assert_eq!(r.recent(1).len(), 1);
        let one = footprint(&request(0, 1000));
        let r = Ring::new(100, 2 * one + one / 2, 1.0);
        for i in 0..6 {
            r.offer(&request(i, 1000), 1);
        }
        assert_eq!(r.len(), 2, "two fit in 2.5 requests' bytes");
        assert!(r.bytes() <= 2 * one + one / 2);
        assert_eq!(r.recent(5)[0].inputs[0].data[0], 5);
        // A request larger than the whole ring is not kept and evicts nothing.
        r.offer(&request(9, 10_000), 1);
        assert_eq!(r.len(), 2);
        assert_eq!(r.recent(1)[0].inputs[0].data[0], 5);
    }

    #[test]
    fn samples_the_asked_fraction_and_nothing_when_off() {
        let r = Ring::new(100_000, 1 << 30, 0.2);
        for _ in 0..20_000 {
            r.offer(&request(1, 4), 1);
        }
        let kept = r.len() as f64 / 20_000.0;
        assert!((kept - 0.2).abs() < 0.02, "{kept}");
        let off = Ring::new(0, 1 << 30, 1.0);
        off.offer(&request(1, 4), 1);
        assert!(off.is_empty());
    }
}
