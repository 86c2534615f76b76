// Reference verifier for Sluice webhook signatures (docs/webhooks.md).
// Dependencies: hmac = "0.12", sha2 = "0.10", hex = "0.4".

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 300;

/// Check the `X-Webhook-Signature` header of one request against its raw
/// body. `secrets` holds the current secret and, during a rotation, the
/// previous one; `now` is the receiver's unix time in seconds.
pub fn verify_webhook(
    secrets: &[&[u8]],
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) if timestamp.is_none() => timestamp = Some(value),
            Some(("t", _)) => return Err("more than one timestamp"),
            Some(("v1", value)) => {
                if let Ok(signature) = hex::decode(value) {
                    signatures.push(signature);
                }
            }
            _ => {} // unknown schemes are ignored
        }
    }
    let timestamp = timestamp.ok_or("no timestamp")?;
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err("malformed timestamp");
    }
    let t: i64 = timestamp.parse().map_err(|_| "malformed timestamp")?;
    if (now - t).abs() > TOLERANCE_SECS {
        return Err("timestamp outside the tolerance (replayed or clock skew)");
    }
    for secret in secrets {
        for signature in &signatures {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err("no valid signature")
}
