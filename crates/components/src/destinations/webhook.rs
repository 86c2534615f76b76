//! `webhook`: signed HTTPS POSTs of record chunks (docs/webhooks.md).
//!
//! A part is sent as one or more chunks of at most `chunk_records`
//! records, each a JSON array in its own request. Every request carries
//! `Idempotency-Key: <batch>:<part>` (`<batch>:<part>:<chunk>` when the
//! part needs several chunks), which is a pure function of the part, so a
//! receiver that remembers keys sees a redelivered chunk as a duplicate
//! (R-DEL-1); the records also carry their stable ids.
//!
//! `X-Webhook-Signature: t=<unix>,v1=<hex>` is HMAC-SHA256 over
//! `"<t>.<body>"`, one `v1` per configured secret (the current one first,
//! then `previous_secret` during a rotation). The timestamp is signed, so
//! a receiver rejects replays by refusing old timestamps.
//!
//! Outcomes: 2xx is delivered; 408, 429 and 5xx, timeouts and connection
//! errors are transient (the `Retry-After` of the answer is passed on to
//! the retry wrapper); a redirect or any other 4xx is permanent and the
//! error names the status and the start of the body (at most 256 bytes,
//! redacted). Retries, backoff and the circuit breaker are applied around
//! each chunk's request by the registry's wrapper
//! (`sluice_outbound::ResilientDestination`, through `write_through`): a
//! failed chunk is retried on its own, with the same key, and the chunks
//! before it are not sent again within the attempt. A part retried in a
//! later attempt re-sends all its chunks with the same keys.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_config::WebhookDestinationSpec;
use sluice_core::destination::{Calls, Direct};
use sluice_core::{DeliveryError, Destination, OutputPart, Problem};
use sluice_outbound::{CallError, ClientOptions, Outbound};

use crate::BuildContext;

/// Most bytes of a refusal's body kept in the error.
const MAX_ERROR_BODY: usize = 256;

pub(crate) struct WebhookDestination {
    url: reqwest::Url,
    secrets: Vec<Vec<u8>>,
    chunk_records: usize,
    timeout: Duration,
    client: sluice_outbound::HttpClient,
    outbound: Outbound,
}

pub(crate) fn build(
    spec: &WebhookDestinationSpec,
    ctx: &BuildContext,
) -> Result<WebhookDestination, Vec<Problem>> {
    let url = reqwest::Url::parse(&spec.url)
        .map_err(|e| vec![Problem::new("/url", format!("not a valid URL: {e}"))])?;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let client = ctx
        .outbound
        .client(ClientOptions {
            timeout,
            follow_redirects: false,
        })
        .map_err(|e| vec![Problem::new("", e.to_string())])?;
    let mut secrets = vec![spec.secret.as_bytes().to_vec()];
    if let Some(previous) = &spec.previous_secret {
        secrets.push(previous.as_bytes().to_vec());
    }
    Ok(WebhookDestination {
        url,
        secrets,
        chunk_records: spec.chunk_records.max(1),
        timeout,
        client,
        outbound: ctx.outbound.clone(),
    })
}

/// The `X-Webhook-Signature` value for `body` sent at unix time `t`.
pub(crate) fn signature_header(secrets: &[Vec<u8>], t: i64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        // HMAC accepts keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            continue;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// Cut a part's NDJSON into JSON-array bodies of at most `per_chunk`
/// records (the lines are JSON objects already; they are not re-parsed).
pub(crate) fn chunks(ndjson: &[u8], per_chunk: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut body = Vec::with_capacity(ndjson.len().min(1 << 20) + 2);
    let mut count = 0;
    for line in ndjson.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        body.push(if count == 0 { b'[' } else { b',' });
        body.extend_from_slice(line);
        count += 1;
        if count == per_chunk {
            body.push(b']');
            out.push(Bytes::from(std::mem::take(&mut body)));
            count = 0;
        }
    }
    if count > 0 {
        body.push(b']');
        out.push(Bytes::from(body));
    }
    out
}

impl WebhookDestination {
    async fn send(&self, key: &str, body: Bytes) -> Result<(), CallError> {
        let request = self
            .client
            .post(self.url.clone())
            .map_err(|denied| CallError::permanent(denied.to_string()))?;
        let t = chrono::Utc::now().timestamp();
        let signature = signature_header(&self.secrets, t, &body);
        let response = request
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("x-webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| sluice_outbound::classify(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(sluice_outbound::retry::parse_retry_after);
        let transient =
            status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error();
        let body = read_prefix(response).await;
        let message = if status.is_redirection() {
            format!(
                "webhook answered {status} (a redirect); configure the final URL{}",
                shown(&body)
            )
        } else {
            format!("webhook answered {status}{}", shown(&body))
        };
        Err(if transient {
            CallError::transient(message).with_retry_after(retry_after)
        } else {
            CallError::permanent(message)
        })
    }
}

/// The first bytes of a response body (at most [`MAX_ERROR_BODY`]).
async fn read_prefix(mut response: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(MAX_ERROR_BODY);
    out
}

/// `: <body>` for an error message, redacted (a receiver may echo what it
/// was sent), or nothing for an empty body.
fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let redacted = sluice_pii::default_redactor().redact_text(text);
    format!(": {redacted}")
}

#[async_trait::async_trait]
impl Destination for WebhookDestination {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        self.write_through(part, &Direct).await
    }

    /// Each chunk is one request through `calls`: a retry re-sends the
    /// chunk that failed, not the chunks the receiver already took, and
    /// the breaker judges (and probes with) single requests.
    async fn write_through(
        &self,
        part: &OutputPart,
        calls: &dyn Calls,
    ) -> Result<(), DeliveryError> {
        let bodies = chunks(&part.ndjson, self.chunk_records);
        let several = bodies.len() > 1;
        for (i, body) in bodies.into_iter().enumerate() {
            let key = if several {
                format!("{}:{}:{}", part.batch_id, part.part, i)
            } else {
                format!("{}:{}", part.batch_id, part.part)
            };
            let (key, body) = (&key, &body);
            calls
                .call(&|| {
                    Box::pin(async move {
                        self.send(key, body.clone())
                            .await
                            .map_err(CallError::into_delivery)
                    })
                })
                .await?;
        }
        Ok(())
    }

    /// The receiver's address resolves to an allowed address and accepts
    /// a TCP connection; nothing is sent.
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.outbound
            .probe_tcp(&self.url, self.timeout)
            .await
            .map_err(sluice_outbound::CallError::into_delivery)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_are_json_arrays_of_at_most_n_records() {
        let nd = b"{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n";
        let c = chunks(nd, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[0][..], b"[{\"a\":1},{\"a\":2}]");
        assert_eq!(&c[1][..], b"[{\"a\":3}]");
        let v: serde_json::Value = serde_json::from_slice(&chunks(nd, 500)[0]).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert!(chunks(b"\n", 3).is_empty());
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // python3: hmac.new(b'whsec_0123456789abcdef', b'1700000000.[]', 'sha256').hexdigest()
        let h = signature_header(&[b"whsec_0123456789abcdef".to_vec()], 1_700_000_000, b"[]");
        assert_eq!(
            h,
            "t=1700000000,v1=5cf2c769fcbf439e10ae4709f90a3fa1394aedc047a4df83760ee59bc0a08cb4"
        );
        let two = signature_header(&[b"a".to_vec(), b"b".to_vec()], 5, b"x");
        assert_eq!(two.matches(",v1=").count(), 2);
    }
}
