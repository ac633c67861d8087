//! The hot path allocates nothing of its own: an unbatched HTTP inference, from its read body to
//! its encoded answer (the server core, `protocol::http::answer`: decoding into reused buffers,
//! validation, the run on the request's thread, statistics, the encoding straight from ONNX
//! Runtime's output), makes exactly the allocations of the bare `session.run` it contains — the
//! ones inside the `ort` bindings — and no more. Counted with a counting global allocator over
//! 1,000 requests after a warm-up, against a real ONNX Runtime and a model made by the `onnx`
//! Python package (the venv that `make test-rust` puts on PATH).

use std::{
    alloc::System,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use kinfer_runtime::{
    models::{
        registry::Registry,
        session::{OrtExecutor, SessionOptions, build_session, specs},
    },
    protocol::http::{Scratch, answer},
    server::{Limits, Server, budget::Budget},
    tensor::{DataType, Tensor, TensorView},
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod common;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 1000;

/// Polls a future that must complete on this thread without waiting for anything: its only
/// pauses are the yields that let other ready requests go first (none here).
fn now<T>(f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..4 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the request waited: it did not run on the request's thread")
}

#[test]
fn an_unbatched_http_inference_allocates_nothing_beyond_the_run_itself() {
    let (dir, path, v) = common::inline_version("alloc");
    let registry = Arc::new(Registry::new("m"));
    registry.stage(v).unwrap();
    registry.serve("1", false).unwrap();
    let limits = Limits {
        max_message_bytes: 1 << 20,
        body_idle_timeout: Duration::from_secs(5),
    };
    let server = Server::new(registry, None, limits, Budget::new(1 << 24));
    let body = br#"{"id":"r1","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4,-1,2,-3,4]}],"outputs":[{"name":"probs"}]}"#;
    let mut scratch = Scratch::default();
    let request = |scratch: &mut Scratch| {
        scratch.body_mut().clear();
        scratch.body_mut().extend_from_slice(body);
        let v = server.resolve("m", None).unwrap();
        let charge = server.budget.charge();
        now(answer(
            &server,
            v,
            "m",
            false,
            None,
            (None, None),
            scratch,
            &charge,
        ))
        .unwrap()
    };
    for _ in 0..100 {
        assert_eq!(request(&mut scratch), None);
    }
    let reply: serde_json::Value = serde_json::from_slice(scratch.answer()).unwrap();
    assert_eq!(reply["id"], "r1");
    assert_eq!(reply["model_version"], "1");
    assert_eq!(reply["outputs"][0]["name"], "probs");
    assert_eq!(reply["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let served = {
        let region = Region::new(GLOBAL);
        for _ in 0..REQUESTS {
            request(&mut scratch);
        }
        region.change()
    };

    // The run alone, as the server makes it: the same session kind, inputs and outputs in place.
    let (session, _) = build_session(&path, &SessionOptions::cpu(1)).unwrap();
    let outputs = specs(&path, "output", session.outputs()).unwrap();
    let mut exec = OrtExecutor { session, outputs };
    let x = [Tensor {
        name: "x".into(),
        dtype: DataType::Fp32,
        shape: vec![2, 4],
        data: [0.1f32, 0.2, 0.3, 0.4, -1.0, 2.0, -3.0, 4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect(),
    }];
    let read = |o: &[TensorView<'_>]| o.iter().map(|t| t.data.len()).sum::<usize>();
    for _ in 0..100 {
        exec.run_with(&x, read).unwrap();
    }
    let run = {
        let region = Region::new(GLOBAL);
        for _ in 0..REQUESTS {
            exec.run_with(&x, read).unwrap();
        }
        region.change()
    };
    let per = |n: usize| n as f64 / REQUESTS as f64;
    eprintln!(
        "allocations per request: server core {:.2}, the run alone {:.2}",
        per(served.allocations),
        per(run.allocations)
    );
    assert_eq!(
        served.allocations,
        run.allocations,
        "the server core allocated {:.2} times per request beyond the run's {:.2}",
        per(served.allocations) - per(run.allocations),
        per(run.allocations)
    );
    assert_eq!(served.reallocations, run.reallocations);
    let _ = std::fs::remove_dir_all(&dir);
}
