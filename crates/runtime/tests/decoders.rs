//! Property tests of everything request bytes reach before a model runs: shape arithmetic, the
//! JSON and gRPC decoders, the BYTES layout and `.npy` parsing. For any shape, datatype and
//! bytes, the result is either a tensor of exactly the declared size or an error — never a
//! panic, never a tensor of another size.

use kinfer_runtime::{
    golden::parse_npy,
    protocol::{
        grpc::decode_inputs,
        json::decode_request,
        pb::{self, model_infer_request::InferInputTensor},
    },
    tensor::{
        DataType, Expect, TensorSpec, byte_size, bytes_elements, check_shape, element_count,
        push_bytes_element, split_bytes, validate_inputs,
    },
};
use proptest::prelude::*;

const MAX_BYTES: usize = 1 << 16;

fn dtype() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

/// Dimensions users send and attackers send: small ones, zero, negatives, powers of two up to
/// i64::MAX and their neighbours.
fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..6,
        1 => -3i64..0,
        1 => (0u32..63).prop_map(|p| 1i64 << p),
        1 => (1u32..63).prop_map(|p| (1i64 << p) - 1),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
    ]
}

fn shape() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(dim(), 0..5)
}

fn spec_for(dtype: DataType, rank: usize) -> Vec<TensorSpec> {
    vec![TensorSpec {
        name: "x".into(),
        dtype,
        shape: vec![-1; rank],
    }]
}

fn expect(specs: &[TensorSpec]) -> Expect<'_> {
    Expect {
        model: "m",
        inputs: specs,
        max_rows: Some(64),
        max_bytes: MAX_BYTES,
    }
}

/// A JSON value for `data`: numbers of every kind, strings, bools, nulls and nesting.
fn json_data() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        "[a-z]{0,4}".prop_map(serde_json::Value::from),
        (0u8..3).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop::collection::vec(inner, 0..8).prop_map(serde_json::Value::Array)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn shape_arithmetic_never_overflows(s in shape(), dt in dtype()) {
        let count = element_count(&s);
        let exact: Option<u128> = if s.iter().any(|&d| d < 0) {
            None
        } else if s.contains(&0) {
            Some(0)
        } else {
            s.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128))
        };
        match count {
            Some(n) => prop_assert_eq!(exact, Some(n as u128)),
            None => prop_assert!(exact.is_none_or(|p| p > usize::MAX as u128)),
        }
        let specs = spec_for(dt, s.len());
        if let Ok(n) = check_shape(&specs[0], dt, &s, Some(64)) {
            prop_assert_eq!(Some(n), count);
            prop_assert!(dt.size().is_none() || byte_size(dt, n).is_some());
        }
    }

    #[test]
    fn validated_tensors_hold_exactly_their_declared_size(
        s in shape(), dt in dtype(), data in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let specs = spec_for(dt, s.len());
        let t = kinfer_runtime::tensor::Tensor { name: "x".into(), dtype: dt, shape: s.clone(), data: data.clone() };
        if validate_inputs("m", &specs, std::slice::from_ref(&t), Some(64), MAX_BYTES).is_ok() {
            let n = element_count(&s).unwrap();
            match byte_size(dt, n) {
                Some(b) => prop_assert_eq!(data.len(), b),
                None => prop_assert_eq!(bytes_elements(&data), Ok(n)),
            }
        }
    }

    #[test]
    fn json_requests_decode_to_the_declared_size_or_fail(
        s in shape(), dt in dtype(), data in json_data()
    ) {
        let body = serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "x", "shape": s, "datatype": dt.as_oip(), "data": data}]
        })).unwrap();
        let specs = spec_for(dt, s.len());
        if let Ok(d) = decode_request(&body, None, expect(&specs)) {
            let t = &d.inputs[0];
            let n = element_count(&t.shape).unwrap();
            match byte_size(dt, n) {
                Some(b) => prop_assert_eq!(t.data.len(), b),
                None => prop_assert_eq!(bytes_elements(&t.data), Ok(n)),
            }
        }
    }

    #[test]
    fn any_body_is_an_answer_not_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..512), header in prop::option::of(0usize..600)
    ) {
        let specs = spec_for(DataType::Fp32, 2);
        let _ = decode_request(&body, header, expect(&specs));
    }

    #[test]
    fn binary_requests_decode_to_the_declared_size_or_fail(
        s in shape(), dt in dtype(), size in 0u64..300, payload in prop::collection::vec(any::<u8>(), 0..300)
    ) {
        let head = serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "x", "shape": s, "datatype": dt.as_oip(), "parameters": {"binary_data_size": size}}]
        })).unwrap();
        let mut body = head.clone();
        body.extend_from_slice(&payload);
        let specs = spec_for(dt, s.len());
        if let Ok(d) = decode_request(&body, Some(head.len()), expect(&specs)) {
            prop_assert_eq!(d.inputs[0].data.len() as u64, size);
            prop_assert_eq!(size as usize, payload.len());
            // Whatever the decoder let through, validation decides on the exact size.
            let ok = validate_inputs("m", &specs, &d.inputs, Some(64), MAX_BYTES).is_ok();
            let n = element_count(&s).unwrap();
            let exact = match byte_size(dt, n) {
                Some(b) => payload.len() == b,
                None => bytes_elements(&payload) == Ok(n),
            };
            prop_assert_eq!(ok, exact);
        }
    }

    #[test]
    fn grpc_requests_decode_to_the_declared_size_or_fail(
        s in shape(), dt in dtype(), raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
        fp32 in prop::collection::vec(any::<f32>(), 0..64), ints in prop::collection::vec(any::<i32>(), 0..64),
        strs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..16),
    ) {
        let mut req = pb::ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: dt.as_oip().into(),
                shape: s.clone(),
                parameters: Default::default(),
                contents: Some(pb::InferTensorContents {
                    fp32_contents: fp32,
                    int_contents: ints,
                    bytes_contents: strs,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        if let Some(raw) = raw {
            req.raw_input_contents.push(raw);
        }
        let specs = spec_for(dt, s.len());
        if let Ok(inputs) = decode_inputs(&mut req, expect(&specs)) {
            let ok = validate_inputs("m", &specs, &inputs, Some(64), MAX_BYTES).is_ok();
            let n = element_count(&s).unwrap();
            if req.raw_input_contents.is_empty() && inputs[0].data.is_empty() && n > 0 {
                prop_assert!(!ok);
            }
            if ok {
                match byte_size(dt, n) {
                    Some(b) => prop_assert_eq!(inputs[0].data.len(), b),
                    None => prop_assert_eq!(bytes_elements(&inputs[0].data), Ok(n)),
                }
            }
        }
    }

    #[test]
    fn bytes_layout_round_trips(data in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(n) = bytes_elements(&data) {
            let items: Vec<&[u8]> = split_bytes(&data).collect();
            prop_assert_eq!(items.len(), n);
            let mut again = Vec::new();
            for i in &items {
                push_bytes_element(&mut again, i).unwrap();
            }
            prop_assert_eq!(again, data);
        }
    }

    #[test]
    fn npy_parsing_never_panics(
        version in 0u8..5, hlen in any::<u16>(), shape_txt in "[-0-9, ]{0,40}", descr in "[<>|]?[fiub][1248]",
        tail in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({shape_txt}), }}");
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.push(version);
        bytes.push(0);
        let len = if hlen % 2 == 0 { header.len() as u16 } else { hlen };
        bytes.extend_from_slice(&len.to_le_bytes());
        if version >= 2 {
            bytes.extend_from_slice(&[0, 0]);
        }
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok(t) = parse_npy("x", bytes) {
            prop_assert!(!t.shape.is_empty());
            let n = element_count(&t.shape).unwrap();
            prop_assert_eq!(Some(t.data.len()), byte_size(t.dtype, n));
        }
    }
}
