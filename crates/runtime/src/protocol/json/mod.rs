//! OIP v2 JSON on the wire, without `serde_json::Value`: a request is read in two passes over
//! the body. The first borrows everything but each input's `data`, which stays raw JSON text
//! (no allocation for it); once the input's name, datatype and shape have been checked against
//! the model, the second pass parses `data` with a visitor per datatype straight into the
//! tensor's little-endian bytes, allocating at most what the shape and the text can hold.
//! Responses are serialised from the tensors' bytes directly.
//!
//! Lists in a request are bounded (inputs, outputs, dimensions) so a body of small entries cannot
//! turn into many large ones; unknown fields are skipped without being kept.
//!
//! [`request`] reads the request (with the small seeds in `fields`), [`data`] parses one
//! input's `data` per datatype, [`response`] writes the answer.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::as_conversions,
    clippy::arithmetic_side_effects
)]

pub mod data;
mod fields;
pub mod request;
pub mod response;

pub use request::{Asked, Decoded, DecodedRequest, decode_request, decode_request_into};
pub use response::{EncodedResponse, encode_response, encode_response_into};

#[cfg(test)]
mod tests;
