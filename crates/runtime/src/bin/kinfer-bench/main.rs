//! `kinfer-bench`: the project's load tool. Fixed-rate (open-loop) load with coordinated-omission
//! correction — each request has an intended send time on a fixed schedule and its latency is
//! measured from that time, so a stalled server is charged for the requests it delayed — or a
//! closed loop (`--rate 0`) for saturation throughput. HdrHistogram percentiles. Also the two
//! limits every server is compared against: a raw in-process `session.run` loop (`raw`), and a
//! bare OIP server on the same HTTP and gRPC stacks that parses requests and answers a fixed
//! tensor (`bare`, [`bare`]).
//!
//! Prints one JSON object per run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kinfer_runtime::{
    models::session::{SessionOptions, init_ort},
    protocol::pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
};
use tokio::sync::Mutex;

mod bare;

/// Load generator for OIP v2 servers.
#[derive(Parser)]
#[command(name = "kinfer-bench", about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// Model name.
    #[arg(long, default_value = "model")]
    model: String,
    /// Input name.
    #[arg(long, default_value = "x")]
    input: String,
    /// Features per row (FP32 input of shape [rows, features]).
    #[arg(long)]
    features: usize,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Requests per second; 0 = closed loop (as fast as the connections go).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Label for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Also write every measured request to FILE as CSV lines `intended_unix_us,latency_us,ok`
    /// (the intended send time on the wall clock, so it lines up with events such as hot swaps
    /// that another process timestamps).
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// URL path for `http` instead of `/v2/models/{model}/infer` (the body stays OIP v2).
    #[arg(long)]
    path: Option<String>,
    /// Multiplies the input values (in [0, 1)): e.g. 30000 makes them usable as token ids for a
    /// model that floors its FP32 input into a vocabulary.
    #[arg(long, default_value_t = 1.0)]
    value_scale: f32,
}

#[derive(Subcommand)]
enum Cmd {
    /// OIP v2 HTTP/JSON.
    Http(Load),
    /// OIP v2 HTTP with FastAPI-style plain JSON body {"x": [[...]]} at PATH (for non-OIP anchors).
    Plain {
        #[command(flatten)]
        load: Load,
        /// URL path.
        #[arg(long)]
        path: String,
    },
    /// OIP v2 gRPC with raw_input_contents.
    Grpc(Load),
    /// In-process `session.run` loop through kinfer's worker (no network).
    Raw {
        /// ONNX model.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Features per row.
        #[arg(long)]
        features: usize,
        /// Rows per run.
        #[arg(long, default_value_t = 1)]
        rows: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Intra-op threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Serve a bare OIP v2 server: kinfer's decoders and encoders on the same HTTP and gRPC
    /// stacks, a fixed answer, no model run (the protocol layer's ceiling).
    Bare {
        /// ONNX model (only its declared inputs and outputs are read).
        #[arg(long)]
        model: std::path::PathBuf,
        /// Model name on the API.
        #[arg(long, default_value = "model")]
        model_name: String,
        /// HTTP port.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// gRPC port.
        #[arg(long, default_value_t = 8081)]
        grpc_port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        listen: std::net::IpAddr,
    },
}

fn input_values(features: usize, rows: usize) -> Vec<f32> {
    (0..features * rows)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect()
}

/// A finished run: the latency histogram and how the run went.
struct Outcome {
    /// Seconds the measured requests took: for a fixed rate, from the start of the measured
    /// window to the last measured answer (at least the window), so that when the server falls
    /// behind, the achieved rate is below the target; for a closed loop, the window.
    duration: f64,
    /// Failed requests in the measured window.
    errors: u64,
    /// Requests scheduled in the measured window but never sent, because the server fell so far
    /// behind that the run gave up (`--rate` only; see `run_load`).
    unsent: u64,
}

fn report(label: &str, mode: &str, target: f64, h: &Histogram<u64>, o: &Outcome) {
    let out = serde_json::json!({
        "label": label, "mode": mode, "target_rps": target,
        "achieved_rps": h.len() as f64 / o.duration, "duration_s": o.duration,
        "requests": h.len(), "errors": o.errors, "unsent": o.unsent,
        "p50_us": h.value_at_quantile(0.50), "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    });
    println!("{out}");
}

enum Client {
    Http(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        String,
        Bytes,
    ),
    Grpc(
        GrpcInferenceServiceClient<tonic::transport::Channel>,
        Box<pb::ModelInferRequest>,
    ),
}

impl Client {
    async fn call(&mut self) -> bool {
        match self {
            Client::Http(send, uri, body) => {
                if send.ready().await.is_err() {
                    return false;
                }
                let req = hyper::Request::post(uri.as_str())
                    .header("content-type", "application/json")
                    .header("host", "bench")
                    .body(Full::new(body.clone()))
                    .expect("request");
                match send.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        ok && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
            Client::Grpc(c, req) => c.model_infer((**req).clone()).await.is_ok(),
        }
    }
}

async fn connect(kind: &str, l: &Load, path: Option<&str>) -> anyhow::Result<Client> {
    let x: Vec<f32> = input_values(l.features, l.rows)
        .into_iter()
        .map(|v| v * l.value_scale)
        .collect();
    match kind {
        "grpc" => {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", l.addr))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let req = pb::ModelInferRequest {
                model_name: l.model.clone(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: l.input.clone(),
                    datatype: "FP32".into(),
                    shape: vec![l.rows as i64, l.features as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![x.iter().flat_map(|f| f.to_le_bytes()).collect()],
                ..Default::default()
            };
            Ok(Client::Grpc(
                GrpcInferenceServiceClient::new(ch),
                Box::new(req),
            ))
        }
        _ => {
            let stream = tokio::net::TcpStream::connect(&l.addr).await?;
            stream.set_nodelay(true)?;
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let rows: Vec<Vec<f32>> = x.chunks(l.features).map(<[f32]>::to_vec).collect();
            let (uri, body) = match path {
                Some(p) => (
                    p.to_owned(),
                    serde_json::to_vec(&serde_json::json!({ &l.input: rows }))?,
                ),
                None => (
                    l.path
                        .clone()
                        .unwrap_or_else(|| format!("/v2/models/{}/infer", l.model)),
                    serde_json::to_vec(
                        &serde_json::json!({"inputs": [{"name": l.input, "shape": [l.rows, l.features], "datatype": "FP32", "data": x}]}),
                    )?,
                ),
            };
            Ok(Client::Http(send, uri, Bytes::from(body)))
        }
    }
}

async fn run_load(kind: &'static str, l: Load, path: Option<String>) -> anyhow::Result<()> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(l.warmup);
    let end = measure_from + Duration::from_secs_f64(l.seconds);
    // A server that cannot keep up with a fixed rate would make the run last for as long as its
    // backlog: past this point the remaining scheduled requests are counted as unsent instead.
    let give_up = end + Duration::from_secs_f64(l.seconds.max(2.0));
    // The wall clock at `clock`, to put intended send times on it for `--record`.
    let (clock, wall_clock) = (
        Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as u64,
    );
    let recording = l.record.is_some();
    let last_done = Arc::new(Mutex::new(measure_from));
    let unsent = Arc::new(AtomicU64::new(0));
    let records = Arc::new(Mutex::new(Vec::<(u64, u64, bool)>::new()));
    let interval = if l.rate > 0.0 {
        Some(Duration::from_secs_f64(1.0 / l.rate))
    } else {
        None
    };
    let mut tasks = Vec::new();
    for _ in 0..l.connections {
        let mut client = connect(kind, &l, path.as_deref()).await?;
        let (hist, errors, next) = (hist.clone(), errors.clone(), next.clone());
        let (last_done, unsent, records) = (last_done.clone(), unsent.clone(), records.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut local_errors = 0;
            let mut local_last = measure_from;
            let mut local_records = Vec::new();
            loop {
                let intended = match interval {
                    Some(iv) => {
                        let k = next.fetch_add(1, Relaxed);
                        let t = start + iv * k as u32;
                        if t >= end {
                            break;
                        }
                        if Instant::now() >= give_up {
                            if t >= measure_from {
                                unsent.fetch_add(1, Relaxed);
                            }
                            continue;
                        }
                        // tokio's timer ticks in milliseconds: sleep to just before the
                        // intended time, then yield until it, so the client adds no delay.
                        if let Some(early) = t.checked_sub(Duration::from_micros(1500))
                            && early > Instant::now()
                        {
                            tokio::time::sleep_until(early.into()).await;
                        }
                        while Instant::now() < t {
                            tokio::task::yield_now().await;
                        }
                        t
                    }
                    None => {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        t.max(start)
                    }
                };
                let ok = client.call().await;
                let done = Instant::now();
                if intended >= measure_from {
                    let latency = (done - intended).as_micros().max(1) as u64;
                    if ok {
                        let _ = local.record(latency);
                    } else {
                        local_errors += 1;
                    }
                    local_last = local_last.max(done);
                    if recording {
                        let at = wall_clock + (intended - clock).as_micros() as u64;
                        local_records.push((at, latency, ok));
                    }
                }
            }
            hist.lock().await.add(&local).expect("same bounds");
            errors.fetch_add(local_errors, Relaxed);
            let mut last = last_done.lock().await;
            *last = (*last).max(local_last);
            records.lock().await.append(&mut local_records);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let h = hist.lock().await;
    if let Some(path) = &l.record {
        use std::io::Write;
        let mut rs = std::mem::take(&mut *records.lock().await);
        rs.sort_unstable();
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (at, latency, ok) in rs {
            writeln!(w, "{at},{latency},{}", u8::from(ok))?;
        }
        w.flush()?;
    }
    // A closed loop counts the requests started in the window (its steady-state rate); a fixed
    // rate counts the time the server took to answer them.
    let duration = match interval {
        Some(_) => (*last_done.lock().await - measure_from)
            .as_secs_f64()
            .max(l.seconds),
        None => l.seconds,
    };
    let outcome = Outcome {
        duration,
        errors: errors.load(Relaxed),
        unsent: unsent.load(Relaxed),
    };
    report(&l.label, kind, l.rate, &h, &outcome);
    Ok(())
}

fn raw(
    model: &std::path::Path,
    features: usize,
    rows: usize,
    seconds: f64,
    threads: usize,
) -> anyhow::Result<()> {
    init_ort(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(std::path::PathBuf::from)
            .as_deref(),
    )?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let opts = SessionOptions::cpu(threads);
    // The same session kinfer builds, run the way the server runs it (inputs in place,
    // outputs read in place), in a tight loop: the limit for any server.
    let (session, _) = kinfer_runtime::models::session::build_session(model, &opts)?;
    let input = session.inputs()[0].name().to_owned();
    let outputs = kinfer_runtime::models::session::specs(model, "output", session.outputs())?;
    let mut exec = kinfer_runtime::models::session::OrtExecutor { session, outputs };
    let x = kinfer_runtime::tensor::Tensor {
        name: input,
        dtype: kinfer_runtime::tensor::DataType::Fp32,
        shape: vec![rows as i64, features as i64],
        data: input_values(features, rows)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    let inputs = [x];
    let read = |o: &[kinfer_runtime::tensor::TensorView<'_>]| o.first().map_or(0, |t| t.data.len());
    for _ in 0..100 {
        exec.run_with(&inputs, read).map_err(anyhow::Error::msg)?;
    }
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        exec.run_with(&inputs, read).map_err(anyhow::Error::msg)?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let outcome = Outcome {
        duration: seconds,
        errors: 0,
        unsent: 0,
    };
    report("raw session.run", "raw", 0.0, &h, &outcome);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Raw {
            model,
            features,
            rows,
            seconds,
            threads,
        } => raw(&model, features, rows, seconds, threads),
        Cmd::Bare {
            model,
            model_name,
            http_port,
            grpc_port,
            listen,
        } => {
            init_ort(
                std::env::var_os("ORT_DYLIB_PATH")
                    .map(std::path::PathBuf::from)
                    .as_deref(),
            )?;
            let opts = SessionOptions::cpu(1);
            // The same runtime flavour as kinfer-runtime's (a worker per CPU; it runs no model,
            // so kinfer-runtime's park hook for rounds has nothing to do here).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(bare::serve(
                &model,
                model_name,
                std::net::SocketAddr::new(listen, http_port),
                std::net::SocketAddr::new(listen, grpc_port),
                &opts,
            ))
        }
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match other {
                    Cmd::Http(l) => run_load("http", l, None).await,
                    Cmd::Grpc(l) => run_load("grpc", l, None).await,
                    Cmd::Plain { load, path } => run_load("plain", load, Some(path)).await,
                    Cmd::Raw { .. } | Cmd::Bare { .. } => unreachable!("handled above"),
                }
            })
        }
    }
}
