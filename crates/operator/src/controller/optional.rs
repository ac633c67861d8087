//! The owned objects a spec may or may not ask for — what scales the Deployment (the
//! operator's HPA or a KEDA ScaledObject) and the policy ConfigMap: applied while asked for,
//! deleted (when the InferenceService owns them) once no longer.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kinfer_api::InferenceService;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use super::apply;
use crate::{
    Error,
    objects::{
        Defaults,
        autoscaling::{Scaler, scaled_object_resource},
    },
};

/// Applies `want` as `name`, or deletes an owned `name` when nothing is wanted.
pub async fn apply_or_delete<K>(
    api: &Api<K>,
    name: &str,
    want: Option<&K>,
    owner: &InferenceService,
) -> Result<(), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    match want {
        Some(obj) => apply(api.clone(), obj).await.map(drop),
        None => delete_if_owned(api, name, owner).await,
    }
}

/// Applies the scaler and removes the other kind: the operator's HPA when KEDA scales, the
/// ScaledObject (when the operator is set up for KEDA) when the HPA or nothing does.
pub async fn apply_scaler(
    client: &Client,
    ns: &str,
    isvc: &InferenceService,
    scaler: &Scaler,
    d: &Defaults,
) -> Result<(), Error> {
    let name = isvc.name_any();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let hpa = match scaler {
        Scaler::Hpa(h) => Some(h.as_ref()),
        _ => None,
    };
    apply_or_delete(&hpas, &name, hpa, isvc).await?;
    // Without the KEDA setting the operator never made a ScaledObject, and KEDA's CRD may not
    // exist: nothing to look for.
    if d.keda_prometheus.is_some() || matches!(scaler, Scaler::Keda(_)) {
        let scaled: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &scaled_object_resource());
        let so = match scaler {
            Scaler::Keda(so) => Some(so.as_ref()),
            _ => None,
        };
        apply_or_delete(&scaled, &name, so, isvc).await?;
    }
    Ok(())
}

async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner: &InferenceService) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // 404 covers both a missing object and a missing resource type (KEDA's CRD not installed).
    let obj = match api.get(name).await {
        Ok(obj) => obj,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(Error::kube(format!("reading {name}"), e)),
    };
    let uid = owner.meta().uid.as_deref();
    if !obj
        .owner_references()
        .iter()
        .any(|o| Some(o.uid.as_str()) == uid)
    {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(name, "deleted an object the spec no longer asks for");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting {name}"), e)),
    }
}
