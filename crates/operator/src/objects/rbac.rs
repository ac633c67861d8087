//! The watcher's identity and least-privilege access: a ServiceAccount, a Role with exactly the
//! rules of the pod contract, and the RoleBinding between them (one set per InferenceService).
//! Secrets and ConfigMaps are readable by name only: those the service's ModelVersions name
//! (S3 credentials, trusted keys) — never the rest of the namespace.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kinfer_api::ModelVersion;

use super::{meta, watcher_name};
use crate::validate::Validated;

/// The ServiceAccount the pods run as.
pub fn service_account(v: &Validated) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(v, watcher_name(&v.name)),
        automount_service_account_token: Some(true),
        ..Default::default()
    }
}

/// The Secrets and ConfigMaps the watcher may read: what the ModelVersions its pods may be
/// asked for (the spec's and the serving one) name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readable {
    /// Secret names (S3 credentials, trusted keys in a Secret).
    pub secrets: BTreeSet<String>,
    /// ConfigMap names (trusted keys).
    pub config_maps: BTreeSet<String>,
}

impl Readable {
    /// What `versions` name.
    pub fn of<'a>(versions: impl IntoIterator<Item = &'a ModelVersion>) -> Self {
        let mut r = Self::default();
        for mv in versions {
            let spec = &mv.spec;
            r.secrets.extend(spec.source.credentials_secret.clone());
            if let Some(k) = &spec.signature.trusted_keys {
                r.secrets.extend(k.secret.clone());
                r.config_maps.extend(k.config_map.clone());
            }
        }
        r
    }
}

/// The pod contract's RBAC: pods get/patch, pods/status patch, inferenceservices and
/// modelversions get/list/watch, the named configmaps and secrets get, events create/patch.
pub fn role(v: &Validated, readable: &Readable) -> Role {
    Role {
        metadata: meta(v, watcher_name(&v.name)),
        rules: Some(watcher_rules(readable)),
    }
}

/// The rules of [`role`]. A resource with no names to read gets no rule at all (an empty
/// `resourceNames` would allow every name).
pub fn watcher_rules(readable: &Readable) -> Vec<PolicyRule> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut rules = vec![
        // list+watch: the watcher watches its own pod (a field selector on its name) for the target.
        rule(&[""], &["pods"], &["get", "list", "watch", "patch"]),
        rule(&[""], &["pods/status"], &["patch"]),
        rule(
            &["kinfer.dev"],
            &["inferenceservices", "modelversions"],
            &["get", "list", "watch"],
        ),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
    ];
    for (resource, names) in [
        ("secrets", &readable.secrets),
        ("configmaps", &readable.config_maps),
    ] {
        if !names.is_empty() {
            rules.push(PolicyRule {
                resource_names: Some(names.iter().cloned().collect()),
                ..rule(&[""], &[resource], &["get"])
            });
        }
    }
    rules
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(v: &Validated) -> RoleBinding {
    let name = watcher_name(&v.name);
    RoleBinding {
        metadata: meta(v, name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(v.namespace.clone()),
            api_group: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::validated;

    fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| {
            r.api_groups.as_ref().unwrap().iter().any(|g| g == group)
                && r.resources.as_ref().unwrap().iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    #[test]
    fn role_is_the_pod_contract_and_nothing_more() {
        let readable = Readable {
            secrets: ["s3-credentials".to_string()].into(),
            config_maps: ["signing-keys".to_string()].into(),
        };
        let r = role(&validated(r#"{"modelVersion":"v"}"#), &readable)
            .rules
            .unwrap();
        for (g, res, verb) in [
            ("", "pods", "get"),
            ("", "pods", "patch"),
            ("", "pods", "watch"),
            ("", "pods/status", "patch"),
            ("kinfer.dev", "inferenceservices", "watch"),
            ("kinfer.dev", "modelversions", "list"),
            ("", "configmaps", "get"),
            ("", "secrets", "get"),
            ("", "events", "create"),
            ("events.k8s.io", "events", "patch"),
        ] {
            assert!(allows(&r, g, res, verb), "{g}/{res} {verb}");
        }
        for (g, res, verb) in [
            ("", "pods", "delete"),
            ("", "secrets", "list"),
            ("", "secrets", "watch"),
            ("kinfer.dev", "inferenceservices", "patch"),
            ("kinfer.dev", "inferenceservices/status", "patch"),
            ("apps", "deployments", "get"),
        ] {
            assert!(
                !allows(&r, g, res, verb),
                "{g}/{res} {verb} must not be allowed"
            );
        }
        assert!(r.iter().all(|x| !x.verbs.iter().any(|v| v == "*")));
        // Secrets and ConfigMaps by name only.
        let named = |res: &str| {
            r.iter()
                .filter(|x| x.resources.as_ref().unwrap().iter().any(|y| y == res))
                .map(|x| x.resource_names.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(named("secrets"), [Some(vec!["s3-credentials".to_string()])]);
        assert_eq!(
            named("configmaps"),
            [Some(vec!["signing-keys".to_string()])]
        );
        // Nothing to read: no rule, never an empty resourceNames (which would allow all).
        let none = role(&validated(r#"{"modelVersion":"v"}"#), &Readable::default())
            .rules
            .unwrap();
        assert!(!allows(&none, "", "secrets", "get"));
        assert!(!allows(&none, "", "configmaps", "get"));
    }

    #[test]
    fn binding_ties_role_to_service_account() {
        let v = validated(r#"{"modelVersion":"v"}"#);
        let b = role_binding(&v);
        assert_eq!(b.role_ref.name, "fraud-watcher");
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("ServiceAccount", "fraud-watcher")
        );
        assert_eq!(s.namespace.as_deref(), Some("ml"));
        assert_eq!(
            service_account(&v).metadata.name.as_deref(),
            Some("fraud-watcher")
        );
    }
}
