//! Tests of the JSON codec: decoding, its refusals and limits, and encoding.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests
use super::{response::DataJson, *};
use crate::tensor::TensorSpec;
use crate::{
    error::InferError,
    tensor::{DataType, Expect, Tensor},
};
use serde_json::json;
use std::time::Duration;

fn spec(dtype: DataType, shape: Vec<i64>) -> Vec<TensorSpec> {
    vec![TensorSpec {
        name: "x".into(),
        dtype,
        shape,
    }]
}

fn expect(specs: &[TensorSpec]) -> Expect<'_> {
    Expect {
        model: "m",
        inputs: specs,
        max_rows: Some(8),
        max_bytes: 1 << 20,
    }
}

fn request(dtype: DataType, shape: &[i64], data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": shape, "datatype": dtype.as_oip(), "data": data}]}))
        .unwrap()
}

fn decode_one(
    dtype: DataType,
    shape: &[i64],
    data: serde_json::Value,
) -> Result<Vec<u8>, InferError> {
    let specs = spec(dtype, vec![-1; shape.len()]);
    decode_request(&request(dtype, shape, data), None, expect(&specs))
        .map(|mut d| d.inputs.remove(0).data)
}

fn encode_data(dtype: DataType, data: &[u8]) -> serde_json::Value {
    serde_json::to_value(DataJson(dtype, data)).unwrap()
}

#[test]
fn json_round_trip_for_every_datatype() {
    let cases = [
        (DataType::Bool, json!([true, false])),
        (DataType::Uint8, json!([0, 255])),
        (DataType::Uint16, json!([0, 65535])),
        (DataType::Uint32, json!([0, 4294967295u64])),
        (DataType::Uint64, json!([0, u64::MAX])),
        (DataType::Int8, json!([-128, 127])),
        (DataType::Int16, json!([-32768, 32767])),
        (DataType::Int32, json!([-2147483648i64, 7])),
        (DataType::Int64, json!([i64::MIN, i64::MAX])),
        (DataType::Fp16, json!([0.5, -2.0])),
        (DataType::Fp32, json!([0.25, -1.5])),
        (DataType::Fp64, json!([0.1, 1e300])),
        (DataType::Bytes, json!(["ab", ""])),
    ];
    for (dt, data) in cases {
        let bytes = decode_one(dt, &[2], data.clone()).unwrap();
        if let Some(size) = dt.size() {
            assert_eq!(bytes.len(), 2 * size);
        }
        assert_eq!(encode_data(dt, &bytes), data, "{dt:?}");
    }
}

#[test]
fn nested_json_is_flattened() {
    let b = decode_one(DataType::Int32, &[2, 2], json!([[1, 2], [3, 4]])).unwrap();
    assert_eq!(encode_data(DataType::Int32, &b), json!([1, 2, 3, 4]));
}

#[test]
fn json_errors_name_the_input_and_problem() {
    let cases = [
        (
            DataType::Int8,
            vec![1],
            json!([300]),
            "input 'x': element 0 (300) is not a valid INT8",
        ),
        (
            DataType::Fp32,
            vec![3],
            json!([1.0]),
            "needs 3 elements but data has 1",
        ),
        (
            DataType::Fp32,
            vec![1],
            json!(["a"]),
            "element 0 (\"a\") is not a valid FP32",
        ),
        (
            DataType::Int32,
            vec![1],
            json!([1.5]),
            "is not a valid INT32",
        ),
        (
            DataType::Fp32,
            vec![2],
            json!([1, null]),
            "data contains null",
        ),
        (DataType::Fp32, vec![1], json!({"a": 1}), "not an object"),
        (DataType::Bool, vec![1], json!([1]), "not a valid BOOL"),
    ];
    for (dt, shape, data, want) in cases {
        let e = decode_one(dt, &shape, data).unwrap_err().to_string();
        assert!(e.contains(want), "{e} lacks {want}");
        assert!(!e.contains("line 1"), "no parser position in {e}");
    }
    let deep = (0..40).fold(json!(1), |v, _| json!([v]));
    let e = decode_one(DataType::Fp32, &[1], deep)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested more than 32 levels"), "{e}");
}

#[test]
fn a_lying_shape_allocates_nothing_large() {
    // Overflowing products are refused before any data is read.
    for shape in [vec![1, 2147483648i64, 2147483648], vec![1, i64::MAX]] {
        let e = decode_one(DataType::Fp32, &shape, json!([]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("than any request can hold"), "{e}");
    }
    // A batch dimension is bounded by --max-request-rows first.
    let e = decode_one(DataType::Fp32, &[2147483648, 2147483648], json!([]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the limit of 8 rows"), "{e}");
    // A product that fits a usize but not the message limit is refused by the limit.
    let e = decode_one(DataType::Fp32, &[1, 1 << 40], json!([]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("over the limit of 1048576 bytes (--max-message-bytes)"),
        "{e}"
    );
    // A shape within the limit with too little data: counted, not allocated.
    let e = decode_one(DataType::Fp32, &[1, 200_000], json!([1.0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 200000 elements but data has 1"), "{e}");
}

#[test]
fn lists_are_bounded() {
    // Inputs are checked as they are read: the limit applies to inputs the model has.
    let inputs: Vec<_> = (0..300)
        .map(|_| json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}))
        .collect();
    let body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap();
    let specs = spec(DataType::Fp32, vec![-1]);
    let e = decode_request(&body, None, expect(&specs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 256 tensors"), "{e}");
    let e = decode_one(DataType::Fp32, &[1; 40], json!([1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 32 dimensions"), "{e}");
}

#[test]
fn binary_and_json_inputs_and_parameters() {
    let specs = vec![TensorSpec {
        name: "x".into(),
        dtype: DataType::Int32,
        shape: vec![2],
    }];
    let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],
        "outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"timeout":5000,"other":{"deep":[1,2]}}}"#;
    let mut body = head.to_vec();
    body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
    let d = decode_request(&body, Some(head.len()), expect(&specs)).unwrap();
    assert_eq!(d.inputs[0].data, vec![1, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(d.binary, vec!["y".to_string()]);
    assert_eq!(d.timeout, Some(Duration::from_millis(5)));
    let e = decode_request(&body, Some(10_000), expect(&specs))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Inference-Header-Content-Length is 10000"),
        "{e}"
    );
    let e = decode_request(&body[..head.len() + 4], Some(head.len()), expect(&specs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the 4 binary bytes"), "{e}");
    let e = decode_request(b"{nope", None, expect(&specs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("malformed inference request JSON"), "{e}");
    let bad_timeout = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","data":[1,2]}],"parameters":{"timeout":-1}}"#;
    let e = decode_request(bad_timeout, None, expect(&specs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("parameter 'timeout'"), "{e}");
}

#[test]
fn responses_carry_json_and_binary_outputs() {
    let outputs = vec![
        Tensor {
            name: "a".into(),
            dtype: DataType::Fp32,
            shape: vec![2],
            data: [f32::NAN, 0.1]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect(),
        },
        Tensor {
            name: "b".into(),
            dtype: DataType::Int8,
            shape: vec![1],
            data: vec![7],
        },
    ];
    let r = encode_response("m", "v1", Some("r1"), &outputs, |n| n == "b").unwrap();
    let n = r.header_len.unwrap();
    let head: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["id"], "r1");
    assert_eq!(head["model_version"], "v1");
    assert_eq!(head["outputs"][0]["data"], json!(["NaN", 0.1]));
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 1);
    assert_eq!(&r.body[n..], &[7]);
}
