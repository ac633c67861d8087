//! Metering of gRPC request bodies as they arrive, before tonic decodes them: the 5-byte gRPC
//! message prefix is checked against `--max-message-bytes` (INVALID_ARGUMENT naming the limit,
//! before the message is read) and every received byte is charged to the in-flight budget
//! (RESOURCE_EXHAUSTED past it). The request's [`Charge`] travels in its extensions so the
//! handler adds its decoded tensors to it; the bytes stay held until the answer is produced.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::server::budget::{Budget, Charge};

/// gRPC's message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// Meters every request of the wrapped gRPC service.
#[derive(Clone, Debug)]
pub struct MeterLayer {
    budget: Budget,
    max_message: usize,
}

impl MeterLayer {
    /// A layer charging `budget` and refusing messages over `max_message` bytes.
    pub fn new(budget: Budget, max_message: usize) -> Self {
        Self {
            budget,
            max_message,
        }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Meter<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Meter {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`MeterLayer`].
#[derive(Clone, Debug)]
pub struct Meter<S> {
    inner: S,
    layer: MeterLayer,
}

impl<S> Service<http::Request<tonic::body::Body>> for Meter<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let charge = Arc::new(self.layer.budget.charge());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(charge.clone());
        let body = MeteredBody {
            inner: body,
            charge,
            max_message: self.layer.max_message,
            prefix: [0; PREFIX],
            prefix_len: 0,
        };
        self.inner.call(http::Request::from_parts(
            parts,
            tonic::body::Body::new(body),
        ))
    }
}

/// A request body that checks the message prefix and charges what arrives.
pub struct MeteredBody {
    inner: tonic::body::Body,
    charge: Arc<Charge>,
    max_message: usize,
    prefix: [u8; PREFIX],
    prefix_len: usize,
}

impl MeteredBody {
    fn check(&mut self, data: &[u8]) -> Result<(), tonic::Status> {
        if self.prefix_len < PREFIX {
            let free = self.prefix.get_mut(self.prefix_len..).unwrap_or_default();
            for (slot, &b) in free.iter_mut().zip(data) {
                *slot = b;
                self.prefix_len += 1;
            }
            if self.prefix_len == PREFIX {
                let [_, a, b, c, d] = self.prefix;
                let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
                if len > self.max_message {
                    return Err(tonic::Status::invalid_argument(format!(
                        "gRPC message of {len} bytes exceeds the limit of {} bytes (--max-message-bytes)",
                        self.max_message
                    )));
                }
            }
        }
        self.charge
            .add(data.len())
            .map_err(|e| tonic::Status::resource_exhausted(e.to_string()))
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => match frame.data_ref().map(|d| this.check(d)) {
                Some(Err(status)) => Some(Err(status)),
                _ => Some(Ok(frame)),
            },
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The charge the metering layer put in a request's extensions (none when unmetered, as in
/// tests that call the service directly).
pub fn charge_of(ext: &http::Extensions) -> Option<Arc<Charge>> {
    ext.get::<Arc<Charge>>().cloned()
}
