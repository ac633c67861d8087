//! The sampled decision log (`--decision-log`): which model version decided what, one JSON line
//! per sampled request — time, request id, model, version, the artifact's digest, the labels of
//! the decision policy, the first output's score per row and the latency. The request path only
//! pushes a record into a bounded channel (dropped and counted when the writer is behind, never
//! waited for); a writer thread appends the lines to stdout (`-`: the container's log, for the
//! cluster's log collector; written whole, so they never interleave with the runtime's own log
//! lines) or to a file, which is rotated at `--decision-log-max-bytes` (one previous file kept as
//! `<file>.1`) so a busy service cannot fill its volume.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
};

use serde::Serialize;

/// The `--decision-log` value that means standard output.
pub const STDOUT: &str = "-";
/// Records queued for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// One line of the decision log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DecisionRecord {
    /// Always `"decision"`: tells these lines from the runtime's own log lines on stdout.
    pub kind: &'static str,
    /// Unix time, milliseconds.
    pub ts_ms: u128,
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Model name.
    pub model: String,
    /// The version that decided.
    pub version: String,
    /// The content digest of the artifact that version was loaded from (`sha256:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// End-to-end latency, microseconds.
    pub latency_us: u64,
    /// Labels per row (when a policy is set).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<String>,
    /// First value of the first output per row.
    pub scores: Vec<f64>,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output, next to the runtime's log.
    Stdout,
    /// A file, appended to and rotated at `max_bytes`.
    File {
        /// The file.
        path: PathBuf,
        /// Size at which it is renamed to `<path>.1` and started again.
        max_bytes: u64,
    },
}

impl Sink {
    /// `-` is stdout; anything else a file.
    pub fn parse(target: &Path, max_bytes: u64) -> Self {
        if target == Path::new(STDOUT) {
            Sink::Stdout
        } else {
            Sink::File {
                path: target.to_owned(),
                max_bytes,
            }
        }
    }
}

/// The sampled decision log.
pub struct DecisionLog {
    tx: SyncSender<DecisionRecord>,
    rate: f64,
    counter: AtomicU64,
    /// Records dropped because the writer fell behind.
    pub dropped: AtomicU64,
}

impl DecisionLog {
    /// Opens the sink (a file is created or appended to; an error names it) and starts the
    /// writer thread.
    pub fn open(sink: Sink, rate: f64) -> Result<Self, String> {
        let file = match &sink {
            Sink::Stdout => None,
            Sink::File { path, .. } => Some(append(path)?),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_lines(rx, sink, file))
            .map_err(|e| format!("cannot start the decision-log writer: {e}"))?;
        Ok(Self {
            tx,
            rate: rate.clamp(0.0, 1.0),
            counter: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether the next request is sampled (deterministic: every 1/rate-th request).
    pub fn sample(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let n = self.counter.fetch_add(1, Relaxed) as f64;
        (n * self.rate).floor() != ((n + 1.0) * self.rate).floor()
    }

    /// Queues a record; drops it (and counts) when the writer is behind.
    pub fn record(&self, r: DecisionRecord) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(r) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

fn append(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open decision log {}: {e}", path.display()))
}

/// The writer: takes what is queued and writes it (stdout: in one locked write per batch, so no
/// line is split by another writer's; a file: rotated before the line that would take it past
/// its size). `file` is the open file of a file sink. Returns when every sender is gone.
fn write_lines(rx: Receiver<DecisionRecord>, sink: Sink, file: Option<std::fs::File>) {
    let buffered = |f| std::io::BufWriter::with_capacity(64 * 1024, f);
    let mut written = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let mut out = file.map(buffered);
    let mut line = Vec::with_capacity(1024);
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(r) = rx.recv() {
        for r in std::iter::once(r).chain(rx.try_iter().take(QUEUE)) {
            line.clear();
            if serde_json::to_writer(&mut line, &r).is_err() {
                continue;
            }
            line.push(b'\n');
            match (&sink, out.as_mut()) {
                (Sink::File { path, max_bytes }, Some(w)) => {
                    if written > 0 && written + line.len() as u64 > *max_bytes {
                        let _ = w.flush();
                        match rotate(path) {
                            Ok(f) => {
                                *w = buffered(f);
                                written = 0;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot rotate the decision log; appending");
                            }
                        }
                    }
                    match w.write_all(&line) {
                        Ok(()) => written += line.len() as u64,
                        Err(e) => tracing::warn!(error = %e, "decision log write failed"),
                    }
                }
                _ => batch.extend_from_slice(&line),
            }
        }
        let result = match out.as_mut() {
            Some(w) => w.flush(),
            None => {
                let mut lock = std::io::stdout().lock();
                let r = lock.write_all(&batch).and_then(|()| lock.flush());
                batch.clear();
                r
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "decision log write failed");
        }
    }
}

/// Renames `path` to `<path>.1` (replacing an older one) and opens a new `path`.
fn rotate(path: &Path) -> Result<std::fs::File, String> {
    let old = PathBuf::from(format!("{}.1", path.display()));
    std::fs::rename(path, &old).map_err(|e| format!("cannot rename {}: {e}", path.display()))?;
    append(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> DecisionRecord {
        DecisionRecord {
            kind: "decision",
            ts_ms: 1,
            request_id: Some(format!("r{i}")),
            model: "m".into(),
            version: "v1".into(),
            digest: Some("sha256:ab".into()),
            latency_us: 10,
            decisions: vec!["allow".into()],
            scores: vec![0.1],
        }
    }

    #[test]
    fn sampling_takes_every_nth_request() {
        let dir = std::env::temp_dir().join(format!("kinfer-dl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = DecisionLog::open(Sink::parse(&dir.join("s.jsonl"), 1 << 20), 0.25).unwrap();
        let taken = (0..100).filter(|_| log.sample()).count();
        assert_eq!(taken, 25);
        let off = DecisionLog::open(Sink::Stdout, 0.0).unwrap();
        assert!(!(0..10).any(|_| off.sample()));
        assert_eq!(Sink::parse(Path::new("-"), 1), Sink::Stdout);
    }

    #[test]
    fn a_file_is_rotated_at_its_size_keeping_one_previous() {
        let dir = std::env::temp_dir().join(format!("kinfer-dl-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.jsonl");
        let line = serde_json::to_string(&record(10)).unwrap().len() as u64 + 1;
        let sink = Sink::parse(&path, 10 * line);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        for i in 10..35 {
            tx.send(record(i)).unwrap();
        }
        drop(tx);
        // The writer on this thread: it returns once the queue is empty and the sender gone.
        write_lines(rx, sink, Some(append(&path).unwrap()));
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let current = read(path.clone());
        let previous = read(dir.join("d.jsonl.1"));
        // 25 lines of equal length, 10 per file: 10-19 went on rotation, 20-29, then 30-34.
        assert_eq!(previous.lines().count(), 10, "{previous}");
        assert!(previous.starts_with(&serde_json::to_string(&record(20)).unwrap()));
        assert_eq!(current.lines().count(), 5, "{current}");
        assert!(current.ends_with(&format!(
            "{}\n",
            serde_json::to_string(&record(34)).unwrap()
        )));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_file_is_named() {
        let e = DecisionLog::open(Sink::parse(Path::new("/nonexistent/dir/d.jsonl"), 1), 1.0)
            .err()
            .unwrap();
        assert!(e.contains("/nonexistent/dir/d.jsonl"), "{e}");
    }
}
