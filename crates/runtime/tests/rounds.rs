//! Requests on a thread under sustained load go in rounds; a request at rest, or in a burst on a
//! worker whose busy spells have been short, runs at once. Against a real ONNX Runtime session
//! of an unbatched version on a Tokio runtime with one worker and kinfer's park hook
//! (`models::inline::worker_parked`), as `kinfer-runtime` builds it: once bursts are the usual
//! load, requests made ready together enter, then run back to back, then finish, each stage as a
//! round; a request after the worker went idle completes in the one poll that started it.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use kinfer_runtime::{
    models::{inline::worker_parked, version::LoadedVersion},
    tensor::{DataType, Tensor},
};

mod common;

/// What happened to request `i`: it reached the run (`Enter`), its answer was encoded from the
/// outputs (`Ran`), its run returned (`Done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Enter(usize),
    Ran(usize),
    Done(usize),
}

/// Counts the polls a future takes.
struct Polls<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for Polls<F> {
    type Output = (F::Output, usize);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        self.inner.as_mut().poll(cx).map(|v| (v, polls))
    }
}

fn x() -> Vec<Tensor> {
    vec![Tensor {
        name: "x".into(),
        dtype: DataType::Fp32,
        shape: vec![1, 4],
        data: [0.1f32, 0.2, 0.3, 0.4]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect(),
    }]
}

/// One request: logs when it reaches the run, when its answer is read and when it returns;
/// answers the number of polls it took.
fn request(
    v: Arc<LoadedVersion>,
    log: Arc<Mutex<Vec<Event>>>,
    i: usize,
) -> impl Future<Output = usize> + Send + 'static {
    let inner = async move {
        let mut inputs = x();
        log.lock().unwrap().push(Event::Enter(i));
        let ran = v
            .run(&mut inputs, 1, None, |outputs| {
                log.lock().unwrap().push(Event::Ran(i));
                outputs.len()
            })
            .await
            .unwrap();
        assert!(ran.value > 0, "the run answered no outputs");
        log.lock().unwrap().push(Event::Done(i));
    };
    async move {
        Polls {
            inner: Box::pin(inner),
            polls: 0,
        }
        .await
        .1
    }
}

#[test]
fn ready_requests_go_in_rounds_under_sustained_load_and_never_at_rest() {
    let (dir, _, v) = common::inline_version("rounds");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_park(worker_parked)
        .build()
        .unwrap();

    rt.block_on(async {
        // At rest: the worker parks between requests, so each completes in its first poll.
        for i in 0..5 {
            let log = Arc::new(Mutex::new(Vec::new()));
            let polls = tokio::spawn(request(v.clone(), log.clone(), i))
                .await
                .unwrap();
            assert_eq!(
                polls, 1,
                "request {i} at rest yielded: it took {polls} polls"
            );
            assert_eq!(
                *log.lock().unwrap(),
                [Event::Enter(i), Event::Ran(i), Event::Done(i)]
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Bursts of eight requests made ready together, by a task on the worker (so it does
        // not park between them). While the worker's spells have been short (the single
        // requests above), a burst does not go in rounds: every request takes one poll. After a
        // few bursts its spells are typically eight long, and the next burst goes in rounds.
        const N: usize = 8;
        let burst = |log: Arc<Mutex<Vec<Event>>>, n: usize| {
            let v = v.clone();
            async move {
                let handles = tokio::spawn(async move {
                    (0..n)
                        .map(|i| tokio::spawn(request(v.clone(), log.clone(), i)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap();
                let mut polls = Vec::new();
                for h in handles {
                    polls.push(h.await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                polls
            }
        };
        let polls = burst(Arc::new(Mutex::new(Vec::new())), N).await;
        assert_eq!(polls, [1; N], "a burst after short spells went in rounds");

        // A long spell counts while it lasts: in 100 requests ready at once, the first 63 to
        // reach their run go straight through; from the 64th on (a spell of 64 requests, far
        // beyond a burst) they go in rounds.
        let log = Arc::new(Mutex::new(Vec::new()));
        let polls = burst(log.clone(), 100).await;
        let entered: Vec<usize> = log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Enter(i) => Some(*i),
                _ => None,
            })
            .collect();
        let straight = entered.iter().take(63).filter(|&&i| polls[i] == 1).count();
        let grouped = entered.iter().skip(63).filter(|&&i| polls[i] == 3).count();
        assert_eq!(
            (straight, grouped),
            (63, 37),
            "polls by request: {polls:?}; entry order: {entered:?}"
        );

        for _ in 0..8 {
            burst(Arc::new(Mutex::new(Vec::new())), N).await;
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let polls = burst(log.clone(), N).await;
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 3 * N, "{log:?}");
        // The first to reach the run found the worker fresh from idle: it went straight through.
        let Event::Enter(first) = log[0] else {
            panic!("{log:?}")
        };
        assert_eq!(
            &log[..3],
            [Event::Enter(first), Event::Ran(first), Event::Done(first)]
        );
        assert_eq!(polls[first], 1, "the first request yielded: {polls:?}");
        // The others: every one entered before any ran, every one ran before any finished.
        let stage = |e: &Event| match e {
            Event::Enter(_) => 0,
            Event::Ran(_) => 1,
            Event::Done(_) => 2,
        };
        let rest: Vec<usize> = log[3..].iter().map(stage).collect();
        let mut sorted = rest.clone();
        sorted.sort_unstable();
        assert_eq!(rest, sorted, "not in rounds: {log:?}");
        for (i, p) in polls.iter().enumerate() {
            if i != first {
                assert_eq!(
                    *p, 3,
                    "request {i} should yield before its run and after it: {polls:?}"
                );
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
