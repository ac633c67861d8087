//! One webhook delivery, made as if the URL were an attacker's: the token only from a Secret
//! that opted in ([`WEBHOOK_TOKEN_LABEL`]), no redirect followed, at most
//! [`MAX_ANSWER_BYTES`] of the answer read, a timeout on every attempt, and the URL redacted to
//! its host wherever it is logged ([`redact`]). Plain `http://` URLs are refused by validation
//! unless the webhook sets `allowInsecureHttp`.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use k8s_openapi::api::core::v1::Secret;
use kinfer_api::{WEBHOOK_TOKEN_LABEL, inference_service::Webhook};
use kube::{Api, Client};
use tracing::{info, warn};

use super::{Alert, Retry, payload};

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

pub(super) fn http_client() -> HttpClient<Https, Full<Bytes>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let tls = builder
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .unwrap_or_else(|_| {
            // No system roots (a scratch image): https webhooks fail to verify, http still works.
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
        });
    let connector = tls.https_or_http().enable_http1().build();
    HttpClient::builder(TokioExecutor::new()).build(connector)
}

/// The bearer token of a webhook: the `key` of Secret `name` in the service's namespace, only
/// when the Secret carries [`WEBHOOK_TOKEN_LABEL`]` = "true"` — a Secret is never sent to a URL
/// unless its owner opted it in. `None` (and a warning naming the Secret, never its contents)
/// otherwise: the alert goes out without a token.
pub(super) async fn read_token(
    client: Option<Client>,
    ns: &str,
    name: &str,
    key: &str,
) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(client?, ns);
    match api.get(name).await {
        Ok(s) => match token_of(&s, key) {
            Ok(t) => Some(t),
            Err(why) => {
                warn!(
                    namespace = ns,
                    secret = name,
                    "{why}; sending the alert without a token"
                );
                None
            }
        },
        Err(e) => {
            warn!(namespace = ns, secret = name, error = %e, "cannot read the webhook token Secret; sending the alert without a token");
            None
        }
    }
}

/// Whether every webhook of a service that names a token Secret may send it, for the
/// `AlertsConfigured` condition: `None` when no webhook names one, else `Err` with a sentence per
/// refused webhook (URL redacted, the Secret named, never its contents).
pub async fn check_tokens(
    client: Client,
    ns: &str,
    webhooks: &[Webhook],
) -> Option<Result<(), String>> {
    let api: Api<Secret> = Api::namespaced(client, ns);
    let mut problems = Vec::new();
    let mut any = false;
    for hook in webhooks {
        let Some(r) = &hook.token_secret else {
            continue;
        };
        any = true;
        let why = match api.get_opt(&r.name).await {
            Ok(Some(s)) => token_of(&s, &r.key).err(),
            Ok(None) => Some("the webhook token Secret does not exist".to_owned()),
            Err(e) => Some(format!("the webhook token Secret cannot be read: {e}")),
        };
        if let Some(why) = why {
            problems.push(format!(
                "webhook {}: Secret {}: {why}; its alerts go out without a token",
                redact(&hook.url),
                r.name
            ));
        }
    }
    any.then(|| {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    })
}

/// The token in `key` of `s` if the Secret opted in, or why not.
pub fn token_of(s: &Secret, key: &str) -> Result<String, String> {
    let opted_in = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(WEBHOOK_TOKEN_LABEL))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Err(format!(
            "the webhook token Secret lacks the label {WEBHOOK_TOKEN_LABEL}=true"
        ));
    }
    let v = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("the webhook token Secret has no key {key:?}"))?;
    Ok(String::from_utf8_lossy(&v.0).trim().to_owned())
}

/// A webhook URL as it may appear in logs and Events: scheme and host only (a Slack URL's path
/// is itself a credential).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/…")
}

/// The most of a webhook's answer that is read; the rest is dropped with the connection.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Posts the alert to one webhook, retrying on connection errors, timeouts, 429 and 5xx; a
/// redirect is not followed. Returns whether it was accepted (2xx).
pub async fn deliver(
    http: &HttpClient<Https, Full<Bytes>>,
    hook: &Webhook,
    token: Option<&str>,
    alert: &Alert,
    retry: Retry,
) -> bool {
    let body = Bytes::from(serde_json::to_vec(&payload(hook.format, alert)).unwrap_or_default());
    for attempt in 1..=retry.attempts {
        let mut req = Request::post(&hook.url).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match req.body(Full::new(body.clone())) {
            Ok(r) => r,
            Err(e) => {
                warn!(url = %redact(&hook.url), error = %e, "invalid webhook URL; not retried");
                return false;
            }
        };
        let result = tokio::time::timeout(retry.timeout, async {
            let resp = http.request(req).await?;
            let status = resp.status();
            // Read (and drop) at most MAX_ANSWER_BYTES of the answer.
            let _ = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match result {
            Ok(Ok(s)) if s.is_success() => {
                info!(url = %redact(&hook.url), attempt, "alert delivered");
                return true;
            }
            Ok(Ok(s)) if s.is_redirection() => {
                warn!(url = %redact(&hook.url), status = %s, "webhook answered with a redirect, which is never followed; not retried");
                return false;
            }
            Ok(Ok(s)) if s.as_u16() != 429 && s.is_client_error() => {
                warn!(url = %redact(&hook.url), status = %s, "webhook refused the alert; not retried");
                return false;
            }
            Ok(Ok(s)) => warn!(url = %redact(&hook.url), status = %s, attempt, "webhook failed"),
            Ok(Err(e)) => {
                warn!(url = %redact(&hook.url), error = %e, attempt, "webhook unreachable")
            }
            Err(_) => warn!(url = %redact(&hook.url), attempt, "webhook timed out"),
        }
        if attempt < retry.attempts {
            tokio::time::sleep(retry.backoff.delay(attempt)).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn urls_are_redacted_to_their_host() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret?x=1"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact("http://user:pw@10.0.0.1:9093/api"),
            "http://10.0.0.1:9093/…"
        );
    }

    #[test]
    fn only_an_opted_in_secret_gives_a_token() {
        let mut s = Secret {
            data: Some([("token".to_string(), ByteString(b"s3cret\n".to_vec()))].into()),
            ..Default::default()
        };
        let e = token_of(&s, "token").unwrap_err();
        assert!(e.contains("kinfer.dev/webhook-token=true"), "{e}");
        s.metadata.labels = Some([(WEBHOOK_TOKEN_LABEL.to_string(), "false".to_string())].into());
        assert!(token_of(&s, "token").is_err());
        s.metadata.labels = Some([(WEBHOOK_TOKEN_LABEL.to_string(), "true".to_string())].into());
        assert_eq!(token_of(&s, "token").unwrap(), "s3cret");
        assert!(token_of(&s, "other").unwrap_err().contains("\"other\""));
    }
}
