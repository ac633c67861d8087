//! Rollback and refusal alerts: the payloads (Alertmanager API v2 JSON, Slack-compatible text)
//! and an actor that delivers them. Reconciles hand a job to the actor through a bounded channel
//! and never wait: deliveries run on background tasks with retries and exponential backoff, a
//! bearer token read from the Secret the webhook names. A full queue drops the alert (counted in
//! `kinfer_alerts_total{result="dropped"}`) rather than stall reconciliation. How one delivery is
//! made safely (https, opted-in token Secrets, no redirects, bounded answers, redacted logs) is
//! [`delivery`].

mod delivery;

pub use delivery::{check_tokens, deliver, redact};

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kinfer_api::inference_service::{Webhook, WebhookFormat};
use kinfer_contract::backoff::Backoff;
use kube::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{Instrument, info_span, warn};

use crate::{
    metrics::Metrics,
    rollout::{AlertInfo, Outcome, describe},
};

/// One alert about one InferenceService.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Namespace.
    pub namespace: String,
    /// InferenceService name.
    pub inference_service: String,
    /// Logical model, when known.
    pub model: Option<String>,
    /// What happened.
    pub info: AlertInfo,
    /// When.
    pub at: Timestamp,
}

impl Alert {
    fn alertname(&self) -> &'static str {
        match self.info.outcome {
            Outcome::Refused => "KinferModelVersionRefused",
            Outcome::Stopped => "KinferRolloutStopped",
            _ => "KinferRolledBack",
        }
    }
}

/// The Alertmanager API v2 body (`POST /api/v2/alerts`): an array of one alert.
pub fn alertmanager_payload(a: &Alert) -> Value {
    let i = &a.info;
    let mut labels = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        labels.insert(k.into(), Value::String(v.into()));
    };
    put("alertname", a.alertname());
    put("severity", "warning");
    put("namespace", &a.namespace);
    put("inferenceservice", &a.inference_service);
    put("version", &i.version);
    put("reason", &i.reason);
    if let Some(m) = &a.model {
        put("model", m);
    }
    if let Some(s) = &i.serving {
        put("serving_version", s);
    }
    if let Some(p) = &i.pod {
        put("pod", p);
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), Value::String(summary(a)));
    annotations.insert("description".into(), Value::String(i.message.clone()));
    if let Some(f) = &i.figures {
        annotations.insert("figures".into(), Value::String(describe(f)));
    }
    json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": a.at.to_string(),
        "generatorURL": format!("kinfer://{}/inferenceservices/{}", a.namespace, a.inference_service),
    }])
}

/// The Slack-compatible body: `{"text": …}`.
pub fn slack_payload(a: &Alert) -> Value {
    let mut text = format!(":rotating_light: {}\n{}", summary(a), a.info.message);
    if let Some(f) = &a.info.figures {
        text.push_str(&format!("\nfigures: {}", describe(f)));
    }
    json!({ "text": text })
}

fn summary(a: &Alert) -> String {
    let i = &a.info;
    let what = match i.outcome {
        Outcome::Refused => "refused",
        Outcome::Stopped => "stopped (autoRollback off)",
        _ => "rolled back",
    };
    let serving = i
        .serving
        .as_deref()
        .map(|s| format!("; {s} serves"))
        .unwrap_or_default();
    format!(
        "{}/{}: {} {what} ({}){serving}",
        a.namespace, a.inference_service, i.version, i.reason
    )
}

/// The body for a webhook's format.
pub fn payload(format: WebhookFormat, a: &Alert) -> Value {
    match format {
        WebhookFormat::Alertmanager => alertmanager_payload(a),
        WebhookFormat::Slack => slack_payload(a),
    }
}

/// Retry schedule of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A job for the actor: one alert, the webhooks to send it to.
#[derive(Debug, Clone)]
pub struct Job {
    /// The alert.
    pub alert: Alert,
    /// Destinations.
    pub webhooks: Vec<Webhook>,
}

/// Handle to the delivery actor; cheap to clone.
#[derive(Clone)]
pub struct Alerter {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl Alerter {
    /// Starts the actor. `client` reads token Secrets (none in tests without an API server).
    pub fn spawn(client: Option<Client>, metrics: Arc<Metrics>, retry: Retry) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        let http = delivery::http_client();
        let m = metrics.clone();
        tokio::spawn(
            async move {
                while let Some(job) = rx.recv().await {
                    for hook in job.webhooks {
                        let (client, http, m, alert) =
                            (client.clone(), http.clone(), m.clone(), job.alert.clone());
                        tokio::spawn(
                            async move {
                                let token = match &hook.token_secret {
                                    Some(r) => {
                                        delivery::read_token(
                                            client,
                                            &alert.namespace,
                                            &r.name,
                                            &r.key,
                                        )
                                        .await
                                    }
                                    None => None,
                                };
                                let ok =
                                    deliver(&http, &hook, token.as_deref(), &alert, retry).await;
                                m.alert(if ok { "sent" } else { "failed" });
                            }
                            .instrument(info_span!("alert_delivery")),
                        );
                    }
                }
            }
            .instrument(info_span!("alerter")),
        );
        Self { tx, metrics }
    }

    /// Queues an alert; never waits.
    pub fn send(&self, job: Job) {
        if job.webhooks.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(job) {
            warn!(error = %e, "alert queue full or closed; alert dropped");
            self.metrics.alert("dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::delivery::http_client;
    use super::*;
    use kinfer_api::inference_service::AnalysisFigures;
    use std::sync::Mutex;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    fn alert() -> Alert {
        Alert {
            namespace: "ml".into(),
            inference_service: "fraud".into(),
            model: Some("fraud".into()),
            info: AlertInfo {
                outcome: Outcome::RolledBack,
                version: "fraud-v8".into(),
                serving: Some("fraud-v7".into()),
                reason: "LatencyRegression".into(),
                message: "fraud-v8 rolled back on pod fraud-0: LatencyRegression: p99 20ms".into(),
                pod: Some("fraud-0".into()),
                figures: Some(AnalysisFigures {
                    p99: Some(0.02),
                    baseline_p99: Some(0.001),
                    ..Default::default()
                }),
            },
            at: Timestamp::from_second(1_700_000_000).unwrap(),
        }
    }

    #[test]
    fn alertmanager_payload_is_a_v2_alert_array() {
        let v = alertmanager_payload(&alert());
        let a = &v.as_array().unwrap()[0];
        assert_eq!(a["labels"]["alertname"], "KinferRolledBack");
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["labels"]["namespace"], "ml");
        assert_eq!(a["labels"]["inferenceservice"], "fraud");
        assert_eq!(a["labels"]["version"], "fraud-v8");
        assert_eq!(a["labels"]["serving_version"], "fraud-v7");
        assert_eq!(a["labels"]["reason"], "LatencyRegression");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20Z");
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("ml/fraud: fraud-v8 rolled back")
        );
        assert_eq!(a["annotations"]["figures"], "p99 20.0ms (baseline 1.0ms)");
        // Every label and annotation value is a string, as Alertmanager requires.
        for k in ["labels", "annotations"] {
            assert!(a[k].as_object().unwrap().values().all(Value::is_string));
        }
    }

    #[test]
    fn slack_payload_is_text() {
        let v = slack_payload(&alert());
        let t = v["text"].as_str().unwrap();
        assert!(
            t.contains("fraud-v8 rolled back (LatencyRegression); fraud-v7 serves"),
            "{t}"
        );
        assert!(t.contains("p99 20.0ms"));
        assert_eq!(v.as_object().unwrap().len(), 1);
        let mut refused = alert();
        refused.info.outcome = Outcome::Refused;
        assert_eq!(
            alertmanager_payload(&refused)[0]["labels"]["alertname"],
            "KinferModelVersionRefused"
        );
    }

    /// A loopback HTTP server answering each request with the next status in `statuses`,
    /// recording the requests.
    async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            for code in statuses.into_iter().chain(std::iter::repeat(200)) {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                loop {
                    let k = c.read(&mut buf[n..]).await.unwrap();
                    n += k;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if n >= h + 4 + len || k == 0 {
                            s.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let resp =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                c.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        (url, seen)
    }

    fn fast() -> Retry {
        Retry {
            attempts: 4,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn delivers_with_bearer_token_after_retrying_5xx() {
        let (url, seen) = receiver(vec![503, 500]).await;
        let hook = Webhook {
            url,
            format: WebhookFormat::Slack,
            token_secret: None,
            allow_insecure_http: true,
        };
        assert!(deliver(&http_client(), &hook, Some("s3cret"), &alert(), fast()).await);
        let reqs = seen.lock().unwrap().clone();
        assert_eq!(reqs.len(), 3, "two failures, then success");
        let last = &reqs[2];
        assert!(last.starts_with("POST /hook HTTP/1.1"));
        assert!(
            last.to_ascii_lowercase()
                .contains("authorization: bearer s3cret")
        );
        let body: Value =
            serde_json::from_str(&last[last.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert!(body["text"].as_str().unwrap().contains("fraud-v8"));
    }

    #[tokio::test]
    async fn gives_up_on_4xx_and_after_the_last_attempt() {
        let (url, seen) = receiver(vec![400]).await;
        let hook = Webhook {
            url,
            format: WebhookFormat::Alertmanager,
            token_secret: None,
            allow_insecure_http: true,
        };
        assert!(!deliver(&http_client(), &hook, None, &alert(), fast()).await);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // A redirect is neither followed nor retried (it could lead the token elsewhere).
        let (url, seen) = receiver(vec![302]).await;
        let redirected = Webhook {
            url,
            ..hook.clone()
        };
        assert!(!deliver(&http_client(), &redirected, Some("t"), &alert(), fast()).await);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Nothing listens: every attempt fails, then it gives up.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let hook = Webhook {
            url: dead,
            format: WebhookFormat::Alertmanager,
            token_secret: None,
            allow_insecure_http: true,
        };
        assert!(!deliver(&http_client(), &hook, None, &alert(), fast()).await);
    }

    #[tokio::test]
    async fn the_actor_never_blocks_the_caller() {
        let (url, seen) = receiver(vec![]).await;
        let metrics = Arc::new(Metrics::default());
        let a = Alerter::spawn(None, metrics.clone(), fast());
        let started = std::time::Instant::now();
        a.send(Job {
            alert: alert(),
            webhooks: vec![Webhook {
                url,
                format: WebhookFormat::Alertmanager,
                token_secret: None,
                allow_insecure_http: true,
            }],
        });
        assert!(started.elapsed() < Duration::from_millis(50));
        for _ in 0..100 {
            if !seen.lock().unwrap().is_empty() && metrics.render().contains("result=\"sent\"") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reqs = seen.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        let body: Value =
            serde_json::from_str(&reqs[0][reqs[0].find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "KinferRolledBack");
        assert!(
            metrics
                .render()
                .contains("kinfer_alerts_total{result=\"sent\"} 1")
        );
    }
}
