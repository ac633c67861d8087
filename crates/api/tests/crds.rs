//! The CRDs under `crds/` and the manifests under `examples/`: generated files are current, every
//! field is documented, the examples pass the schema and its CEL rules, and each invariant refuses
//! a manifest that breaks it with its own message. The cluster tier applies the same files to a
//! real API server.

use std::path::{Path, PathBuf};

use kinfer_api::{InferenceService, ModelTrustPolicy, ModelVersion};
use kube::CustomResourceExt;
use serde_json::Value;

fn repo() -> PathBuf {
    // The crate's directory as cargo gives it when running the test: a binary cargo reused from
    // another checkout of the workspace (a shared target dir) carries that checkout's path in
    // env!().
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("../..")
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("CRD has a schema"),
    )
    .unwrap()
}

#[test]
fn committed_crds_match_the_code() {
    for crd in kinfer_api::crds() {
        let path = repo().join("crds").join(kinfer_api::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            committed == kinfer_api::crd_yaml(&crd).unwrap(),
            "{} is out of date: run `make crds` and commit the result",
            path.display()
        );
    }
}

/// Walks a schema and collects the paths of properties without a description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = format!("{path}.{name}");
            // metadata, apiVersion and kind are Kubernetes' own.
            let own =
                !(path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str()));
            if own
                && sub
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                out.push(p.clone());
            }
            undocumented(sub, &p, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|v| v.is_object()) {
            undocumented(sub, &format!("{path}[]"), out);
        }
    }
}

#[test]
fn every_field_has_a_description() {
    for crd in kinfer_api::crds() {
        let mut missing = Vec::new();
        undocumented(&schema_of(&crd), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn crds_have_short_names_status_and_printer_columns() {
    let isvc = InferenceService::crd();
    let mv = ModelVersion::crd();
    assert_eq!(
        isvc.spec.names.short_names.as_deref(),
        Some(&["infsvc".to_string()][..])
    );
    assert_eq!(
        mv.spec.names.short_names.as_deref(),
        Some(&["mv".to_string()][..])
    );
    for crd in [&isvc, &mv] {
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
    let cols = |crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(cols(&isvc), ["Serving", "Target", "Phase", "Ready", "Age"]);
    assert_eq!(cols(&mv), ["Model", "Version", "Verified", "Age"]);
}

/// A structural check of `value` against an OpenAPI v3 schema (types, required, enum, unknown
/// fields), then the CEL rules — what the API server does before it stores an object.
fn check_structure(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errors.push(format!("{path}: must be an object"));
                return;
            };
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap();
                if !obj.contains_key(req) {
                    errors.push(format!("{path}.{req}: required"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, v) in obj {
                let p = format!("{path}.{k}");
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                    continue; // checked by the API server itself, not by the CRD schema
                }
                if let Some(sub) = props.and_then(|ps| ps.get(k)) {
                    check_structure(sub, v, &p, errors);
                } else if let Some(sub) = extra.filter(|e| e.is_object()) {
                    check_structure(sub, v, &p, errors);
                } else if !preserve {
                    errors.push(format!("{p}: unknown field"));
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    check_structure(&schema["items"], v, &format!("{path}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{path}: must be an array")),
        },
        Some("string") if !value.is_string() => errors.push(format!("{path}: must be a string")),
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            errors.push(format!("{path}: must be an integer"))
        }
        Some("number") if !value.is_number() => errors.push(format!("{path}: must be a number")),
        Some("boolean") if !value.is_boolean() => errors.push(format!("{path}: must be a boolean")),
        _ => {}
    }
}

/// Validates one manifest like the API server would: structure, then defaults (serde's, which
/// the schema declares), then CEL. Returns the messages of every violation.
fn admit(doc: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (crd, defaulted): (_, Result<Value, String>) = match kind {
        "InferenceService" => (
            InferenceService::crd(),
            serde_json::from_value::<InferenceService>(doc.clone())
                .map(|o| serde_json::to_value(o).unwrap())
                .map_err(|e| e.to_string()),
        ),
        "ModelVersion" => (
            ModelVersion::crd(),
            serde_json::from_value::<ModelVersion>(doc.clone())
                .map(|o| serde_json::to_value(o).unwrap())
                .map_err(|e| e.to_string()),
        ),
        "ModelTrustPolicy" => (
            ModelTrustPolicy::crd(),
            serde_json::from_value::<ModelTrustPolicy>(doc.clone())
                .map(|o| serde_json::to_value(o).unwrap())
                .map_err(|e| e.to_string()),
        ),
        other => panic!("not a kinfer kind: {other}"),
    };
    let schema = schema_of(&crd);
    let mut errors = Vec::new();
    check_structure(&schema, doc, "", &mut errors);
    let defaulted = defaulted.map_err(|e| vec![e])?;
    if let Err(e) = kube::core::cel::Validator::new().validate(&schema, &defaulted, old) {
        errors.extend(
            e.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn kinfer_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_yaml::from_value::<Value>(serde::Deserialize::deserialize(d).unwrap()).unwrap()
        })
        .filter(|v| {
            v["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("kinfer.dev/"))
        })
        .collect()
}

#[test]
fn examples_pass_the_schema_and_cel_rules() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in kinfer_docs(&path) {
                admit(&doc, None).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 4,
        "expected the ModelVersion and three InferenceServices, saw {seen}"
    );
}

#[test]
fn invalid_examples_are_refused_with_their_reason() {
    let cases = [
        (
            "canary-exceeds-replicas.yaml",
            "rollout.canary.replicas must be <= replicas",
        ),
        (
            "bad-source-uri.yaml",
            "uri must look like s3://bucket/prefix/",
        ),
    ];
    for (file, want) in cases {
        let path = repo().join("examples/invalid").join(file);
        let doc = kinfer_docs(&path).remove(0);
        let errs = admit(&doc, None).expect_err(file);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{file}: {errs:?} lacks {want:?}"
        );
    }
}

fn isvc(spec: Value) -> Value {
    serde_json::json!({"apiVersion": "kinfer.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "t"}, "spec": spec})
}

fn mv(spec: Value) -> Value {
    serde_json::json!({"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "t"}, "spec": spec})
}

#[test]
fn each_invariant_refuses_with_its_own_message() {
    use serde_json::json;
    let good_source = json!({"uri": "s3://models/fraud/v1/"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "negative replicas",
            isvc(json!({"modelVersion": "a", "replicas": -1})),
            "replicas must be >= 0",
        ),
        (
            "canary > replicas",
            isvc(
                json!({"modelVersion": "a", "replicas": 1, "rollout": {"canary": {"replicas": 2}}}),
            ),
            "canary.replicas must be <= replicas",
        ),
        (
            "gpu count 0",
            isvc(json!({"modelVersion": "a", "resources": {"gpu": {"count": 0}}})),
            "gpu.count must be > 0",
        ),
        (
            "empty modelVersion",
            isvc(json!({"modelVersion": ""})),
            "modelVersion must name",
        ),
        (
            "autoscaling min > max",
            isvc(json!({"modelVersion": "a", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}})),
            "minReplicas must be <= maxReplicas",
        ),
        (
            "bad duration",
            isvc(json!({"modelVersion": "a", "runtime": {"requestTimeout": "soon"}})),
            "invalid duration",
        ),
        (
            "request timeout too long",
            isvc(json!({"modelVersion": "a", "runtime": {"requestTimeout": "2h"}})),
            "requestTimeout must be at most 1h",
        ),
        (
            "queue capacity too large",
            isvc(
                json!({"modelVersion": "a", "runtime": {"batching": {"queueCapacity": 2147483647}}}),
            ),
            "queueCapacity must be between 1 and 65536",
        ),
        (
            "batch size too large",
            isvc(json!({"modelVersion": "a", "runtime": {"batching": {"maxBatchSize": 100000}}})),
            "maxBatchSize must be between 1 and 4096",
        ),
        (
            "queue delay too long",
            isvc(
                json!({"modelVersion": "a", "runtime": {"batching": {"maxQueueDelay": "1500ms"}}}),
            ),
            "maxQueueDelay must be at most 1s",
        ),
        (
            "baseline fraction over a half",
            isvc(
                json!({"modelVersion": "a", "rollout": {"analysis": {"baseline": {"fraction": 0.7}}}}),
            ),
            "analysis.baseline.fraction must be between 0 and 0.5",
        ),
        (
            "certain confidence",
            isvc(json!({"modelVersion": "a", "rollout": {"analysis": {"confidence": 1.0}}})),
            "analysis.confidence must be in [0.5, 1)",
        ),
        (
            "latency ratio below one",
            isvc(json!({"modelVersion": "a", "rollout": {"analysis": {"maxLatencyRatio": 0.9}}})),
            "analysis.maxLatencyRatio must be >= 1",
        ),
        (
            "too many instances",
            isvc(json!({"modelVersion": "a", "runtime": {"instances": 1000}})),
            "instances must be between 1 and 64",
        ),
        (
            "too many threads",
            isvc(json!({"modelVersion": "a", "runtime": {"intraOpThreads": 100000}})),
            "intraOpThreads must be between 1 and 256",
        ),
        (
            "reserved policy label",
            isvc(
                json!({"modelVersion": "a", "policy": {"output": "s", "default": "invalid", "thresholds": [{"min": 0.5, "label": "x"}]}}),
            ),
            "label 'invalid' is reserved",
        ),
        (
            "reserved threshold label",
            isvc(
                json!({"modelVersion": "a", "policy": {"output": "s", "thresholds": [{"min": 0.5, "label": "invalid"}]}}),
            ),
            "label 'invalid' is reserved",
        ),
        (
            "unknown provider",
            isvc(json!({"modelVersion": "a", "runtime": {"executionProvider": "tpu"}})),
            "tpu",
        ),
        (
            "unknown field",
            isvc(json!({"modelVersion": "a", "replica": 3})),
            "unknown field",
        ),
        (
            "shadow rate 0",
            isvc(
                json!({"modelVersion": "a", "rollout": {"shadow": {"sampleRate": 0.0, "duration": "1m"}}}),
            ),
            "sampleRate must be in (0, 1]",
        ),
        (
            "webhook not http",
            isvc(json!({"modelVersion": "a", "alerts": {"webhooks": [{"url": "ftp://x"}]}})),
            "webhook url must start with http",
        ),
        (
            "plain http webhook without the opt-in",
            isvc(
                json!({"modelVersion": "a", "alerts": {"webhooks": [{"url": "http://am:9093/api/v2/alerts"}]}}),
            ),
            "webhook url must be https://",
        ),
        (
            "negative atol",
            mv(
                json!({"model": "m", "version": "v1", "source": good_source, "validation": {"atol": -1.0}}),
            ),
            "atol must be >= 0",
        ),
        (
            "negative rtol",
            mv(
                json!({"model": "m", "version": "v1", "source": good_source, "validation": {"rtol": -0.1}}),
            ),
            "rtol must be >= 0",
        ),
        (
            "agreement > 1",
            mv(
                json!({"model": "m", "version": "v1", "source": good_source, "validation": {"minAgreement": 1.5}}),
            ),
            "minAgreement must be between 0 and 1",
        ),
        (
            "not s3",
            mv(json!({"model": "m", "version": "v1", "source": {"uri": "http://x/y"}})),
            "uri must look like s3://",
        ),
        (
            "no bucket",
            mv(json!({"model": "m", "version": "v1", "source": {"uri": "s3:///prefix"}})),
            "uri must look like s3://",
        ),
        (
            "both key sources",
            mv(
                json!({"model": "m", "version": "v1", "source": good_source, "signature": {"trustedKeys": {"configMap": "a", "secret": "b"}}}),
            ),
            "exactly one of configMap or secret",
        ),
        (
            "bad version label",
            mv(json!({"model": "m", "version": "v 1", "source": good_source})),
            "version must be 1-63 characters",
        ),
    ];
    for (name, doc, want) in cases {
        let errs = admit(&doc, None).expect_err(name);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{name}: {errs:?} lacks {want:?}"
        );
    }
    // And the good neighbours of those cases pass.
    admit(&isvc(json!({"modelVersion": "a", "replicas": 0})), None).expect("scale to zero");
    admit(
        &isvc(json!({"modelVersion": "a", "replicas": 2, "rollout": {"canary": {"replicas": 2}}})),
        None,
    )
    .expect("all canary");
    admit(
        &mv(json!({"model": "m", "version": "v1", "source": good_source})),
        None,
    )
    .expect("minimal mv");
}

#[test]
fn model_version_spec_is_immutable() {
    use serde_json::json;
    let v1 = mv(json!({"model": "m", "version": "v1", "source": {"uri": "s3://models/m/v1/"}}));
    let moved = mv(json!({"model": "m", "version": "v1", "source": {"uri": "s3://models/m/v2/"}}));
    let defaulted = |d: &Value| {
        serde_json::to_value(serde_json::from_value::<ModelVersion>(d.clone()).unwrap()).unwrap()
    };
    admit(&v1, Some(&defaulted(&v1))).expect("an unchanged spec is accepted");
    let errs = admit(&moved, Some(&defaulted(&v1))).expect_err("changing the source is refused");
    assert!(
        errs.iter()
            .any(|e| e.contains("ModelVersion spec is immutable")),
        "{errs:?}"
    );
}

#[test]
fn defaults_are_filled_in() {
    let doc = isvc(serde_json::json!({"modelVersion": "fraud-v1"}));
    let obj: InferenceService = serde_json::from_value(doc).unwrap();
    assert_eq!(obj.spec.replicas, 1);
    assert_eq!(obj.spec.rollout.canary.replicas, 1);
    assert!(obj.spec.rollout.auto_rollback);
    assert_eq!(
        obj.spec.rollout.analysis.window.get(),
        std::time::Duration::from_secs(30)
    );
    let a = &obj.spec.rollout.analysis;
    assert_eq!(a.max_window.get(), std::time::Duration::from_secs(120));
    assert_eq!(a.max_p99_ratio, 1.5);
    assert_eq!((a.max_latency_ratio, a.confidence), (1.15, 0.95));
    assert_eq!((a.baseline.fraction, a.baseline.pair_rate), (0.5, 0.1));
    let schema = serde_json::to_string(&InferenceService::crd()).unwrap();
    assert!(
        schema.contains("\"default\""),
        "defaults are published in the CRD for the API server"
    );
    let mv: ModelVersion = serde_json::from_value(mv(
        serde_json::json!({"model": "m", "version": "v1", "source": {"uri": "s3://b/p/"}}),
    ))
    .unwrap();
    assert!(
        mv.spec.signature.required,
        "signatures are required by default"
    );
    assert_eq!(mv.spec.signature.bundle, "model.sig");
}

#[test]
fn trust_policy_rules() {
    use serde_json::json;
    let policy = |spec: Value| {
        json!({"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelTrustPolicy",
               "metadata": {"name": "p"}, "spec": spec})
    };
    let pem = "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n";
    admit(
        &policy(json!({"publicKeys": [{"name": "release", "pem": pem}]})),
        None,
    )
    .expect("one key, signatures required");
    admit(&policy(json!({"allowUnsigned": true})), None).expect("unsigned only, no keys");
    for (spec, want) in [
        (json!({}), "needs at least one public key"),
        (
            json!({"publicKeys": [{"name": "release", "pem": "not a key"}]}),
            "pem must be one PEM public key",
        ),
        (
            json!({"publicKeys": [{"name": "bad name!", "pem": pem}]}),
            "name must be 1-63 characters",
        ),
    ] {
        let errs = admit(&policy(spec.clone()), None).expect_err(&spec.to_string());
        assert!(errs.iter().any(|e| e.contains(want)), "{spec}: {errs:?}");
    }
}
