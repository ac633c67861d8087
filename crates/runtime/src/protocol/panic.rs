//! The last-resort guard of both front ends: a panic while a request is handled becomes an
//! error answer for that request alone (HTTP 500, gRPC INTERNAL), counted in
//! `kinfer_panics_total`, instead of a connection dropped with no answer. Nothing reachable from
//! request bytes should panic; this is for the bug nobody found yet.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::atomic::Ordering::Relaxed,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::PANICS;

/// Wraps a service so its panics become the response `on_panic` builds.
pub struct CatchPanicLayer<R> {
    on_panic: fn() -> R,
}

impl<R> Clone for CatchPanicLayer<R> {
    fn clone(&self) -> Self {
        Self {
            on_panic: self.on_panic,
        }
    }
}

impl<R> CatchPanicLayer<R> {
    /// A layer answering a panic with `on_panic()`.
    pub fn new(on_panic: fn() -> R) -> Self {
        Self { on_panic }
    }
}

impl<S, R> Layer<S> for CatchPanicLayer<R> {
    type Service = CatchPanic<S, R>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic {
            inner,
            on_panic: self.on_panic,
        }
    }
}

/// See [`CatchPanicLayer`].
pub struct CatchPanic<S, R> {
    inner: S,
    on_panic: fn() -> R,
}

impl<S: Clone, R> Clone for CatchPanic<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            on_panic: self.on_panic,
        }
    }
}

fn caught<R>(on_panic: fn() -> R) -> R {
    PANICS.fetch_add(1, Relaxed);
    tracing::error!(
        "a request handler panicked (a bug); answered with an error, other requests unaffected"
    );
    on_panic()
}

impl<S, Req, R> Service<Req> for CatchPanic<S, R>
where
    S: Service<Req, Response = R>,
{
    type Response = R;
    type Error = S::Error;
    type Future = Guarded<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Guarded {
            fut: catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).ok(),
            on_panic: self.on_panic,
        }
    }
}

pin_project! {
    /// The guarded response future (no inner future when `call` itself panicked).
    pub struct Guarded<F, R> {
        #[pin]
        fut: Option<F>,
        on_panic: fn() -> R,
    }
}

impl<F, R, E> Future for Guarded<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let on_panic = *this.on_panic;
        match this.fut.as_pin_mut() {
            Some(fut) => match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                Ok(p) => p,
                Err(_) => Poll::Ready(Ok(caught(on_panic))),
            },
            None => Poll::Ready(Ok(caught(on_panic))),
        }
    }
}

/// The HTTP answer to a panic: 500 with the usual error body.
pub fn http_panic_response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"error": "internal error while handling the request (a bug, counted in kinfer_panics_total); other requests are unaffected"})),
    )
        .into_response()
}

/// The gRPC answer to a panic: status INTERNAL in a trailers-only response.
pub fn grpc_panic_response() -> ::http::Response<tonic::body::Body> {
    tonic::Status::internal(
        "internal error while handling the request (a bug, counted in kinfer_panics_total); other requests are unaffected",
    )
    .into_http()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_and_counts() {
        let before = PANICS.load(Relaxed);
        let svc = tower::service_fn(|fail: bool| async move {
            if fail {
                panic!("boom");
            }
            Ok::<_, Infallible>("ok")
        });
        let mut svc = CatchPanicLayer::new(|| "caught").layer(svc);
        assert_eq!(svc.call(false).await, Ok("ok"));
        assert_eq!(svc.call(true).await, Ok("caught"));
        assert_eq!(svc.call(false).await, Ok("ok"));
        assert!(PANICS.load(Relaxed) > before);
    }
}
