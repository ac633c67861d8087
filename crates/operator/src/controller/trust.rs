//! Reads what a ModelVersion's trust decision needs — the cluster's ModelTrustPolicies, its
//! namespace's labels, and the keys its `signature.trustedKeys` names — and hands them to the
//! pure [`crate::trust`].

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kinfer_api::{
    ModelTrustPolicy, ModelVersion, model_version::AppliedTrust, trust_policy::PublicKey,
};
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{
    Error,
    trust::{self, Violation},
};

/// The trust `mv` gets: `Ok(None)` where no policy selects its namespace, `Err(Violation)` where
/// it asks for more than the policies grant.
pub async fn applied(
    client: &Client,
    mv: &ModelVersion,
    ns: &str,
) -> Result<Result<Option<AppliedTrust>, Violation>, Error> {
    let policies = match Api::<ModelTrustPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        // The CRD is not installed (an older chart): no policy exists.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(Error::kube("listing ModelTrustPolicies", e)),
    };
    if policies.is_empty() {
        return Ok(Ok(None));
    }
    let namespace = Api::<Namespace>::all(client.clone())
        .get(ns)
        .await
        .map_err(|e| Error::kube(format!("reading namespace {ns}"), e))?;
    let governing = trust::governing(&policies, namespace.labels());
    if governing.is_empty() {
        return Ok(Ok(None));
    }
    let own = match &mv.spec.signature.trusted_keys {
        None => None,
        Some(tk) => Some(own_keys(client, ns, tk).await?),
    };
    Ok(trust::apply(ns, &governing, &mv.spec, own.as_deref()))
}

/// The PEM public keys in the ConfigMap or Secret a ModelVersion names, by key name.
async fn own_keys(
    client: &Client,
    ns: &str,
    tk: &kinfer_api::model_version::TrustedKeys,
) -> Result<Vec<PublicKey>, Error> {
    let values: Vec<(String, String)> = match (&tk.config_map, &tk.secret) {
        (Some(cm), _) => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(cm)
            .await
            .map_err(|e| Error::kube(format!("reading the trusted-keys ConfigMap {cm}"), e))?
            .data
            .unwrap_or_default()
            .into_iter()
            .collect(),
        (None, Some(s)) => Api::<Secret>::namespaced(client.clone(), ns)
            .get(s)
            .await
            .map_err(|e| Error::kube(format!("reading the trusted-keys Secret {s}"), e))?
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
        (None, None) => Vec::new(),
    };
    Ok(values
        .into_iter()
        .filter(|(_, v)| v.contains("-----BEGIN PUBLIC KEY-----"))
        .map(|(name, pem)| PublicKey {
            name: name.trim_end_matches(".pem").to_owned(),
            pem,
        })
        .collect())
}
