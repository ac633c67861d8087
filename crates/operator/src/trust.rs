//! The trust a ModelVersion gets where ModelTrustPolicies govern its namespace, pure: which
//! policies select the namespace, whether the ModelVersion asks for more than they grant
//! (unsigned artifacts, a key no policy lists), and which keys its verification uses. Every
//! policy that selects a namespace applies; a ModelVersion narrows that trust, never widens it.

use std::collections::BTreeMap;

use kinfer_api::{
    ModelTrustPolicy, ModelVersionSpec, model_version::AppliedTrust, trust_policy::PublicKey,
};
use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
};

/// Reason on a ModelVersion refused by a policy (its `Verified=False` condition and Event).
pub const TRUST_POLICY_VIOLATION: &str = "TrustPolicyViolation";

/// A ModelVersion asking for more trust than a policy grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The policy that stops it.
    pub policy: String,
    /// What it asked for and what to do instead.
    pub message: String,
}

/// The policies that select a namespace with `labels`, ordered by name. A selector that cannot
/// be evaluated (an unknown operator) selects every namespace: a broken policy fails closed.
pub fn governing<'a>(
    policies: &'a [ModelTrustPolicy],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a ModelTrustPolicy> {
    let mut out: Vec<&ModelTrustPolicy> = policies
        .iter()
        .filter(|p| {
            Selector::try_from(p.spec.namespace_selector.clone())
                .map(|s| s.matches(labels))
                .unwrap_or(true)
        })
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// A PEM key compared by its base64 body (line breaks and spaces do not matter).
fn body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

fn lists(p: &ModelTrustPolicy, key: &PublicKey) -> bool {
    let b = body(&key.pem);
    p.spec.public_keys.iter().any(|k| body(&k.pem) == b)
}

/// The trust a ModelVersion of namespace `ns` gets from `governing` (see [`governing`]).
/// `own_keys` are the keys its `signature.trustedKeys` names (`None` when it names none).
/// `Ok(None)`: no policy governs the namespace, the ModelVersion's own settings apply.
pub fn apply(
    ns: &str,
    governing: &[&ModelTrustPolicy],
    spec: &ModelVersionSpec,
    own_keys: Option<&[PublicKey]>,
) -> Result<Option<AppliedTrust>, Violation> {
    let Some(first) = governing.first() else {
        return Ok(None);
    };
    if !spec.signature.required
        && let Some(p) = governing.iter().find(|p| !p.spec.allow_unsigned)
    {
        return Err(Violation {
            policy: p.name_any(),
            message: format!(
                "signature.required: false is not allowed in namespace {ns}: ModelTrustPolicy {} \
                 does not allow unsigned models (allowUnsigned: false); sign the artifact and \
                 publish a new ModelVersion",
                p.name_any()
            ),
        });
    }
    let keys: Vec<PublicKey> = match own_keys {
        Some(own) => {
            for k in own {
                if let Some(p) = governing.iter().find(|p| !lists(p, k)) {
                    return Err(Violation {
                        policy: p.name_any(),
                        message: format!(
                            "the ModelVersion trusts key {:?} (signature.trustedKeys), which \
                             ModelTrustPolicy {} does not list for namespace {ns}; trust only \
                             the policy's keys, or leave trustedKeys out to use them all",
                            k.name,
                            p.name_any()
                        ),
                    });
                }
            }
            own.to_vec()
        }
        None => first
            .spec
            .public_keys
            .iter()
            .filter(|k| governing.iter().all(|p| lists(p, k)))
            .cloned()
            .collect(),
    };
    if keys.is_empty() && spec.signature.required {
        let names: Vec<String> = governing.iter().map(|p| p.name_any()).collect();
        return Err(Violation {
            policy: first.name_any(),
            message: format!(
                "no key is trusted by every ModelTrustPolicy that selects namespace {ns} ({}): \
                 nothing could verify; give the policies a common key",
                names.join(", ")
            ),
        });
    }
    Ok(Some(AppliedTrust {
        policies: governing.iter().map(|p| p.name_any()).collect(),
        public_keys: keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfer_api::ModelTrustPolicySpec;
    use serde_json::json;

    const A: &str = "-----BEGIN PUBLIC KEY-----\nAAAA\nBBBB\n-----END PUBLIC KEY-----\n";
    const B: &str = "-----BEGIN PUBLIC KEY-----\nCCCC\n-----END PUBLIC KEY-----\n";

    fn key(name: &str, pem: &str) -> PublicKey {
        PublicKey {
            name: name.into(),
            pem: pem.into(),
        }
    }

    fn policy(
        name: &str,
        selector: serde_json::Value,
        keys: &[&str],
        unsigned: bool,
    ) -> ModelTrustPolicy {
        let mut p = ModelTrustPolicy::new(
            name,
            ModelTrustPolicySpec {
                namespace_selector: serde_json::from_value(selector).unwrap(),
                public_keys: keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| key(&format!("k{i}"), k))
                    .collect(),
                allow_unsigned: unsigned,
            },
        );
        p.metadata.name = Some(name.into());
        p
    }

    fn spec(required: bool) -> ModelVersionSpec {
        serde_json::from_value(json!({"model": "fraud", "version": "v1",
            "source": {"uri": "s3://models/fraud/v1/"}, "signature": {"required": required}}))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_choose_the_governing_policies() {
        let ps = [
            policy("all", json!({}), &[A], false),
            policy("team-a", json!({"matchLabels": {"team": "a"}}), &[A], false),
            policy(
                "not-prod",
                json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
                &[A],
                true,
            ),
        ];
        let names = |l| {
            governing(&ps, &l)
                .iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(labels(&[("team", "a"), ("env", "prod")])),
            ["all", "team-a"]
        );
        assert_eq!(names(labels(&[("env", "dev")])), ["all", "not-prod"]);
        // A selector that cannot be evaluated governs everything.
        let broken = [policy(
            "broken",
            json!({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}),
            &[A],
            false,
        )];
        assert_eq!(governing(&broken, &labels(&[])).len(), 1);
    }

    #[test]
    fn no_policy_leaves_the_model_versions_own_trust() {
        assert_eq!(apply("ml", &[], &spec(false), None), Ok(None));
    }

    #[test]
    fn unsigned_needs_every_policy_to_allow_it() {
        let (lax, strict) = (
            policy("lax", json!({}), &[A], true),
            policy("strict", json!({}), &[A], false),
        );
        let e = apply("ml", &[&lax, &strict], &spec(false), None).unwrap_err();
        assert_eq!(e.policy, "strict");
        assert!(
            e.message.contains("signature.required: false")
                && e.message.contains("ModelTrustPolicy strict"),
            "{}",
            e.message
        );
        assert!(apply("ml", &[&lax], &spec(false), None).unwrap().is_some());
    }

    #[test]
    fn own_keys_may_narrow_never_widen() {
        let p = policy("corp", json!({}), &[A], false);
        // A key of the policy, written with other line breaks: allowed, and only it is used.
        let narrowed = apply(
            "ml",
            &[&p],
            &spec(true),
            Some(&[key(
                "mine",
                "-----BEGIN PUBLIC KEY-----\nAAAABBBB\n-----END PUBLIC KEY-----",
            )]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(narrowed.public_keys[0].name, "mine");
        assert_eq!(narrowed.policies, ["corp"]);
        let e = apply(
            "ml",
            &[&p],
            &spec(true),
            Some(&[key("mine", A), key("attacker", B)]),
        )
        .unwrap_err();
        assert!(
            e.message.contains("\"attacker\"") && e.message.contains("ModelTrustPolicy corp"),
            "{}",
            e.message
        );
    }

    #[test]
    fn without_own_keys_the_keys_every_policy_lists_are_used() {
        let (p1, p2) = (
            policy("a", json!({}), &[A, B], false),
            policy("b", json!({}), &[B], false),
        );
        let t = apply("ml", &[&p1, &p2], &spec(true), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            t.public_keys
                .iter()
                .map(|k| k.pem.as_str())
                .collect::<Vec<_>>(),
            [B]
        );
        let p3 = policy("c", json!({}), &[A], false);
        let e = apply("ml", &[&p2, &p3], &spec(true), None).unwrap_err();
        assert!(
            e.message
                .contains("no key is trusted by every ModelTrustPolicy")
                && e.message.contains("b, c"),
            "{}",
            e.message
        );
    }
}
