//! Secrets at rest (R-SEC-1, R-SEC-2): the secret fields of pipeline
//! configs and the failed-record captures, encrypted with AES-256-GCM
//! under per-tenant keys, and master key rotation.
//!
//! Which fields are secret is decided by one table,
//! [`sluice_config::SECRET_FIELDS`]. Before a config reaches the database
//! each of those values (a string) is replaced by
//! `sluice:enc:v1:<kid>:<base64url(nonce || ciphertext)>`: a random 96-bit
//! nonce, the tenant's `config-secrets` key under the master key `kid`,
//! and associated data that binds the ciphertext to the tenant, the
//! pipeline and the field's JSON pointer, so a ciphertext copied to
//! another field, pipeline or tenant does not decrypt. Validation always
//! sees the plain values; the stored form is decrypted only to build a
//! pipeline (the worker) and to mask it for API responses, which show
//! `****` plus the last 4 characters (only `****` for a secret shorter than
//! 8 characters, which the last 4 would nearly give away). A PUT that
//! sends back the masked form of the stored secret keeps it.
//!
//! Failed-record captures (`batch_errors.record`) are sealed the same way,
//! one AES-GCM message per row under the `captures` key, bound to the
//! batch and the record index. Payloads use a streaming construction: see
//! [`crate::payload`].
//!
//! Rotation ([`rotate`]) walks every stored config version, capture and
//! payload and re-encrypts what is not under the current key; the keyring
//! keeps accepting the retired keys meanwhile, so servers keep running.

use crate::keyring::Keyring;
use crate::payload::PayloadStore;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::Value;
use sluice_config::{ComponentKind, secret_paths};
use sluice_core::Problem;
use sluice_store::{NewAuditEvent, Store};
use uuid::Uuid;

/// Prefix of every encrypted value Sluice stores in a JSON document.
pub const ENCRYPTED_PREFIX: &str = "sluice:enc:v1:";
/// What a masked secret starts with.
pub const MASK: &str = "****";

const CONFIG_PURPOSE: &str = "config-secrets";
const CAPTURE_PURPOSE: &str = "captures";

/// Why a stored secret could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Made under a master key this process does not have.
    #[error("encrypted under master key {0}, which this process does not have")]
    UnknownKey(String),
    /// Not in the stored format.
    #[error("malformed encrypted value")]
    Malformed,
    /// The ciphertext or its binding (tenant, pipeline, field) is wrong.
    #[error("an encrypted value failed authentication")]
    Tampered,
}

/// Encrypt `plaintext` under `key`: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // AES-GCM encryption fails only for messages beyond 64 GiB.
    match cipher.encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: plaintext,
            aad,
        },
    ) {
        Ok(ct) => out.extend_from_slice(&ct),
        Err(_) => debug_assert!(false, "AES-GCM encryption failed"),
    }
    out
}

/// Decrypt what [`seal`] made.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
    if sealed.len() < 12 + 16 {
        return Err(SecretError::Malformed);
    }
    let (nonce, ct) = sealed.split_at(12);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| SecretError::Tampered)
}

/// `sluice:enc:v1:<kid>:<b64>` of `plaintext` under the current key.
fn encrypt_value(
    keyring: &Keyring,
    tenant_id: Uuid,
    purpose: &str,
    aad: &[u8],
    plaintext: &[u8],
) -> String {
    let key = keyring.tenant_key(tenant_id, purpose);
    format!(
        "{ENCRYPTED_PREFIX}{}:{}",
        keyring.kid(),
        URL_SAFE_NO_PAD.encode(seal(&key, aad, plaintext))
    )
}

/// The key id of an encrypted value, if `value` is one.
pub fn encrypted_kid(value: &str) -> Option<&str> {
    value
        .strip_prefix(ENCRYPTED_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map(|(kid, _)| kid)
}

fn decrypt_value(
    keyring: &Keyring,
    tenant_id: Uuid,
    purpose: &str,
    aad: &[u8],
    value: &str,
) -> Result<Vec<u8>, SecretError> {
    let rest = value
        .strip_prefix(ENCRYPTED_PREFIX)
        .ok_or(SecretError::Malformed)?;
    let (kid, b64) = rest.split_once(':').ok_or(SecretError::Malformed)?;
    let key = keyring
        .tenant_key_for(kid, tenant_id, purpose)
        .ok_or_else(|| SecretError::UnknownKey(kid.to_owned()))?;
    let sealed = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| SecretError::Malformed)?;
    open(&key, aad, &sealed)
}

fn config_aad(tenant_id: Uuid, pipeline_id: Uuid, pointer: &str) -> Vec<u8> {
    format!("sluice/config-secret/v1\0{tenant_id}\0{pipeline_id}\0{pointer}").into_bytes()
}

/// The masked form of a secret.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n < 8 {
        return MASK.to_owned();
    }
    let last: String = secret.chars().skip(n - 4).collect();
    format!("{MASK}{last}")
}

/// JSON pointers (absolute, in the pipeline document) of every value that
/// is a secret field of its component, whatever the value's type.
pub fn secret_pointers(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut component = |kind: ComponentKind, base: String, value: &Value| {
        let Some(type_name) = value.get("type").and_then(Value::as_str) else {
            return;
        };
        for pattern in secret_paths(kind, type_name) {
            let tokens: Vec<&str> = pattern.split('/').skip(1).collect();
            expand(value, &tokens, base.clone(), &mut out);
        }
    };
    if let Some(destination) = config.get("destination") {
        component(
            ComponentKind::Destination,
            "/destination".into(),
            destination,
        );
    }
    if let Some(Value::Array(processors)) = config.get("processors") {
        for (n, processor) in processors.iter().enumerate() {
            component(
                ComponentKind::Processor,
                format!("/processors/{n}"),
                processor,
            );
        }
    }
    out
}

fn expand(value: &Value, tokens: &[&str], at: String, out: &mut Vec<String>) {
    let Some((first, rest)) = tokens.split_first() else {
        out.push(at);
        return;
    };
    match (value, *first) {
        (Value::Object(map), "*") => {
            for (key, child) in map {
                expand(
                    child,
                    rest,
                    format!("{at}/{}", sluice_core::pointer_token(key)),
                    out,
                );
            }
        }
        (Value::Array(items), "*") => {
            for (n, child) in items.iter().enumerate() {
                expand(child, rest, format!("{at}/{n}"), out);
            }
        }
        (Value::Object(map), token) => {
            let key = token.replace("~1", "/").replace("~0", "~");
            if let Some(child) = map.get(&key) {
                expand(child, rest, format!("{at}/{token}"), out);
            }
        }
        (Value::Array(items), token) => {
            if let Some(child) = token.parse::<usize>().ok().and_then(|n| items.get(n)) {
                expand(child, rest, format!("{at}/{token}"), out);
            }
        }
        _ => {}
    }
}

/// Encrypt every plain string secret of `config` (in place) for
/// `pipeline_id` of `tenant_id`. Values already encrypted are left alone.
pub fn encrypt_config(keyring: &Keyring, tenant_id: Uuid, pipeline_id: Uuid, config: &mut Value) {
    for pointer in secret_pointers(config) {
        if let Some(value) = config.pointer_mut(&pointer)
            && let Value::String(plain) = value
            && !plain.starts_with(ENCRYPTED_PREFIX)
        {
            let aad = config_aad(tenant_id, pipeline_id, &pointer);
            *value = Value::String(encrypt_value(
                keyring,
                tenant_id,
                CONFIG_PURPOSE,
                &aad,
                plain.as_bytes(),
            ));
        }
    }
}

/// Decrypt every encrypted secret of a stored `config` (in place), for
/// building the pipeline.
pub fn decrypt_config(
    keyring: &Keyring,
    tenant_id: Uuid,
    pipeline_id: Uuid,
    config: &mut Value,
) -> Result<(), SecretError> {
    for pointer in secret_pointers(config) {
        if let Some(value) = config.pointer_mut(&pointer)
            && let Value::String(stored) = value
            && stored.starts_with(ENCRYPTED_PREFIX)
        {
            let aad = config_aad(tenant_id, pipeline_id, &pointer);
            let plain = decrypt_value(keyring, tenant_id, CONFIG_PURPOSE, &aad, stored)?;
            *value = Value::String(String::from_utf8(plain).map_err(|_| SecretError::Malformed)?);
        }
    }
    Ok(())
}

/// Replace every secret of a stored `config` by its masked form, for API
/// responses. A value that cannot be decrypted shows as `****`.
pub fn mask_config(keyring: &Keyring, tenant_id: Uuid, pipeline_id: Uuid, config: &mut Value) {
    for pointer in secret_pointers(config) {
        if let Some(value) = config.pointer_mut(&pointer) {
            let masked = match value {
                Value::String(stored) if stored.starts_with(ENCRYPTED_PREFIX) => {
                    let aad = config_aad(tenant_id, pipeline_id, &pointer);
                    match decrypt_value(keyring, tenant_id, CONFIG_PURPOSE, &aad, stored)
                        .ok()
                        .and_then(|p| String::from_utf8(p).ok())
                    {
                        Some(plain) => mask(&plain),
                        None => MASK.to_owned(),
                    }
                }
                Value::String(plain) => mask(plain),
                _ => MASK.to_owned(),
            };
            *value = Value::String(masked);
        }
    }
}

/// In a config sent with PUT, put back the stored secret wherever the
/// client sent its masked form; any other masked-looking secret is a
/// problem (the client must send the secret itself).
pub fn restore_masked(
    keyring: &Keyring,
    tenant_id: Uuid,
    pipeline_id: Uuid,
    doc: &mut Value,
    stored: &Value,
) -> Result<(), Vec<Problem>> {
    let stored_pointers = secret_pointers(stored);
    let mut problems = Vec::new();
    for pointer in secret_pointers(doc) {
        let Some(Value::String(sent)) = doc.pointer(&pointer) else {
            continue;
        };
        if !sent.starts_with(MASK) {
            continue;
        }
        let kept = stored_pointers
            .contains(&pointer)
            .then(|| stored.pointer(&pointer))
            .flatten()
            .and_then(Value::as_str)
            .and_then(|value| {
                if value.starts_with(ENCRYPTED_PREFIX) {
                    let aad = config_aad(tenant_id, pipeline_id, &pointer);
                    decrypt_value(keyring, tenant_id, CONFIG_PURPOSE, &aad, value)
                        .ok()
                        .and_then(|p| String::from_utf8(p).ok())
                } else {
                    Some(value.to_owned())
                }
            })
            .filter(|plain| mask(plain) == *sent);
        match kept {
            Some(plain) => {
                if let Some(slot) = doc.pointer_mut(&pointer) {
                    *slot = Value::String(plain);
                }
            }
            None => problems.push(Problem::new(
                pointer.clone(),
                "this masked value does not match the stored secret at this field; send the secret itself",
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Re-encrypt under the current key every secret of a stored config that
/// is under another key. True when something changed.
pub fn rewrap_config(
    keyring: &Keyring,
    tenant_id: Uuid,
    pipeline_id: Uuid,
    config: &mut Value,
) -> Result<bool, SecretError> {
    let mut changed = false;
    for pointer in secret_pointers(config) {
        if let Some(value) = config.pointer_mut(&pointer)
            && let Value::String(stored) = value
        {
            let needs = match encrypted_kid(stored) {
                Some(kid) => kid != keyring.kid(),
                // A plain secret stored before encryption existed.
                None => true,
            };
            if !needs {
                continue;
            }
            let aad = config_aad(tenant_id, pipeline_id, &pointer);
            let plain = if stored.starts_with(ENCRYPTED_PREFIX) {
                decrypt_value(keyring, tenant_id, CONFIG_PURPOSE, &aad, stored)?
            } else {
                stored.clone().into_bytes()
            };
            *value = Value::String(encrypt_value(
                keyring,
                tenant_id,
                CONFIG_PURPOSE,
                &aad,
                &plain,
            ));
            changed = true;
        }
    }
    Ok(changed)
}

fn capture_aad(tenant_id: Uuid, batch_id: Uuid, record_index: i64) -> Vec<u8> {
    format!("sluice/capture/v1\0{tenant_id}\0{batch_id}\0{record_index}").into_bytes()
}

/// The stored form of a failed-record capture: the record's JSON text
/// encrypted, as a JSON string.
pub fn seal_record(
    keyring: &Keyring,
    tenant_id: Uuid,
    batch_id: Uuid,
    record_index: i64,
    record: &Value,
) -> Value {
    let text = record.to_string();
    Value::String(encrypt_value(
        keyring,
        tenant_id,
        CAPTURE_PURPOSE,
        &capture_aad(tenant_id, batch_id, record_index),
        text.as_bytes(),
    ))
}

/// The record of a stored capture (a capture stored before encryption
/// existed is returned as it is).
pub fn open_record(
    keyring: &Keyring,
    tenant_id: Uuid,
    batch_id: Uuid,
    record_index: i64,
    stored: &Value,
) -> Result<Value, SecretError> {
    match stored {
        Value::String(s) if s.starts_with(ENCRYPTED_PREFIX) => {
            let plain = decrypt_value(
                keyring,
                tenant_id,
                CAPTURE_PURPOSE,
                &capture_aad(tenant_id, batch_id, record_index),
                s,
            )?;
            serde_json::from_slice(&plain).map_err(|_| SecretError::Malformed)
        }
        other => Ok(other.clone()),
    }
}

/// What a rotation re-encrypted.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    /// The key everything is now under.
    pub kid: String,
    /// Config versions whose secrets were re-encrypted.
    pub config_versions: u64,
    /// Failed-record captures re-encrypted.
    pub captures: u64,
    /// Payloads whose data key was re-wrapped.
    pub payloads: u64,
    /// Payloads already under the current key.
    pub payloads_current: u64,
}

/// Re-encrypt every stored secret, capture and payload data key that is
/// not under `keyring`'s current key. Safe to run while servers run (and
/// to run again after an interruption): servers hold the same keyring
/// (current key plus the retired ones), so they read both forms.
pub async fn rotate(
    store: &dyn Store,
    payloads: &PayloadStore,
    keyring: &Keyring,
) -> anyhow::Result<RotationReport> {
    use anyhow::Context;
    let mut report = RotationReport {
        kid: keyring.kid().to_owned(),
        ..RotationReport::default()
    };
    let mut after = None;
    loop {
        let page = store.scan_pipeline_versions(after, 200).await?;
        let Some((_, last)) = page.last() else { break };
        after = Some((last.pipeline_id, last.version));
        for (tenant_id, version) in page {
            let mut config = version.config.clone();
            let changed = rewrap_config(keyring, tenant_id, version.pipeline_id, &mut config)
                .with_context(|| {
                    format!(
                        "pipeline {} version {}",
                        version.pipeline_id, version.version
                    )
                })?;
            if changed {
                store
                    .reencrypt_pipeline_version(version.pipeline_id, version.version, &config)
                    .await?;
                report.config_versions += 1;
            }
        }
    }
    let mut after = None;
    loop {
        let page = store.scan_batch_errors(after, 500).await?;
        let Some((_, last)) = page.last() else { break };
        after = Some(last.id);
        for (tenant_id, error) in page {
            let current = matches!(&error.record, Value::String(s) if encrypted_kid(s) == Some(keyring.kid()));
            if current {
                continue;
            }
            let record = open_record(
                keyring,
                tenant_id,
                error.batch_id,
                error.record_index,
                &error.record,
            )
            .with_context(|| format!("failed-record capture {}", error.id))?;
            let sealed = seal_record(
                keyring,
                tenant_id,
                error.batch_id,
                error.record_index,
                &record,
            );
            store.reencrypt_batch_error(error.id, &sealed).await?;
            report.captures += 1;
        }
    }
    let (rewrapped, current) = payloads.rewrap_all().await?;
    report.payloads = rewrapped;
    report.payloads_current = current;
    store
        .append_system_audit(NewAuditEvent {
            tenant_id: Uuid::nil(),
            actor_key_id: None,
            action: "master_key.rotate".into(),
            target: Some(format!("master_key:{}", keyring.kid())),
            request_id: None,
            client_addr: Some("cli".into()),
            details: serde_json::json!({
                "kid": report.kid,
                "accepted_kids": keyring.kids(),
                "config_versions": report.config_versions,
                "captures": report.captures,
                "payloads": report.payloads,
            }),
        })
        .await?;
    tracing::warn!(
        target: "sluice::security",
        security_event = "master_key.rotate",
        kid = %report.kid,
        config_versions = report.config_versions,
        captures = report.captures,
        payloads = report.payloads,
        "master key rotation finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keyring::MasterKey;
    use serde_json::json;

    const CANARY: &str = "canary-SECRET-7f3a9c";

    fn doc() -> Value {
        json!({
            "name": "p",
            "processors": [
                {"type": "filter", "secret": "not-a-secret-field"},
                {"type": "enrich_http", "providers": [
                    {"api_key": CANARY, "headers": {"X-Token": "header-secret-1234", "a/b": "slash-secret-9"}},
                    {"api_key": "second-key-abcd"}
                ]}
            ],
            "destination": {"type": "webhook", "url": "https://example.com/h", "secret": CANARY, "previous_secret": 12345}
        })
    }

    #[test]
    fn pointers_follow_the_secret_field_table() {
        let mut found = secret_pointers(&doc());
        found.sort();
        assert_eq!(
            found,
            vec![
                "/destination/previous_secret",
                "/destination/secret",
                "/processors/1/providers/0/api_key",
                "/processors/1/providers/0/headers/X-Token",
                "/processors/1/providers/0/headers/a~1b",
                "/processors/1/providers/1/api_key",
            ]
        );
    }

    #[test]
    fn configs_round_trip_and_hold_no_plaintext() {
        let ring = Keyring::from_bytes([9; 32]);
        let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
        let mut stored = doc();
        encrypt_config(&ring, t, p, &mut stored);
        let text = stored.to_string();
        assert!(!text.contains(CANARY), "{text}");
        assert!(!text.contains("header-secret"), "{text}");
        assert!(!text.contains("slash-secret"), "{text}");
        assert!(text.contains(&format!("{ENCRYPTED_PREFIX}{}:", ring.kid())));
        // Not a secret field: untouched. A non-string secret: untouched.
        assert_eq!(stored["processors"][0]["secret"], "not-a-secret-field");
        assert_eq!(stored["destination"]["previous_secret"], 12345);
        // Encrypting again changes nothing.
        let again = {
            let mut s = stored.clone();
            encrypt_config(&ring, t, p, &mut s);
            s
        };
        assert_eq!(again, stored);
        let mut plain = stored.clone();
        decrypt_config(&ring, t, p, &mut plain).unwrap();
        assert_eq!(plain, doc());
        // Bound to the tenant and the pipeline.
        let mut other = stored.clone();
        assert!(matches!(
            decrypt_config(&ring, t, Uuid::now_v7(), &mut other),
            Err(SecretError::Tampered)
        ));
        let mut other = stored.clone();
        assert!(decrypt_config(&ring, Uuid::now_v7(), p, &mut other).is_err());
        // Bound to the field: a ciphertext moved to another field fails.
        let mut moved = stored.clone();
        moved["destination"]["secret"] = stored["processors"][1]["providers"][1]["api_key"].clone();
        assert!(decrypt_config(&ring, t, p, &mut moved).is_err());
        // Another master key cannot read it.
        let mut foreign = stored.clone();
        assert!(matches!(
            decrypt_config(&Keyring::from_bytes([8; 32]), t, p, &mut foreign),
            Err(SecretError::UnknownKey(_))
        ));
    }

    #[test]
    fn masks_show_the_last_four_characters_of_long_secrets_only() {
        assert_eq!(mask(CANARY), "****3a9c");
        assert_eq!(mask("abcdefgh"), "****efgh");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("ünïcödé-ß"), "****dé-ß");
        let ring = Keyring::from_bytes([9; 32]);
        let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
        let mut shown = doc();
        encrypt_config(&ring, t, p, &mut shown);
        mask_config(&ring, t, p, &mut shown);
        assert_eq!(shown["destination"]["secret"], "****3a9c");
        assert_eq!(shown["destination"]["previous_secret"], "****");
        assert_eq!(
            shown["processors"][1]["providers"][1]["api_key"],
            "****abcd"
        );
        assert!(!shown.to_string().contains(CANARY));
    }

    #[test]
    fn masked_values_sent_back_keep_the_stored_secret() {
        let ring = Keyring::from_bytes([9; 32]);
        let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
        let mut stored = doc();
        encrypt_config(&ring, t, p, &mut stored);
        let mut shown = stored.clone();
        mask_config(&ring, t, p, &mut shown);
        // The client edits a non-secret field and replaces one secret.
        let mut sent = shown.clone();
        sent["destination"]["url"] = json!("https://example.com/other");
        sent["processors"][1]["providers"][1]["api_key"] = json!("a-brand-new-key-0000");
        sent["destination"]["previous_secret"] = json!("rotated-secret-5555");
        restore_masked(&ring, t, p, &mut sent, &stored).unwrap();
        assert_eq!(sent["destination"]["secret"], CANARY);
        assert_eq!(
            sent["processors"][1]["providers"][0]["headers"]["X-Token"],
            "header-secret-1234"
        );
        assert_eq!(
            sent["processors"][1]["providers"][1]["api_key"],
            "a-brand-new-key-0000"
        );
        // A masked value that does not match what is stored is refused.
        let mut wrong = shown.clone();
        wrong["destination"]["secret"] = json!("****zzzz");
        // (The fixture's previous_secret is a number, masked as `****`,
        // which matches no stored string: send a plain one.)
        wrong["destination"]["previous_secret"] = json!("plain-previous-secret");
        let problems = restore_masked(&ring, t, p, &mut wrong, &stored).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "/destination/secret");
        // So is a masked value where nothing is stored.
        let mut fresh = shown.clone();
        fresh["processors"][1]["providers"][0]["headers"]["New"] = json!("****1234");
        assert!(restore_masked(&ring, t, p, &mut fresh, &stored).is_err());
    }

    #[test]
    fn rotation_rewraps_under_the_current_key() {
        let old = MasterKey::new([1; 32]);
        let new = MasterKey::new([2; 32]);
        let before = Keyring::with_previous(old.clone(), vec![]);
        let during = Keyring::with_previous(new.clone(), vec![old.clone()]);
        let after = Keyring::with_previous(new.clone(), vec![]);
        let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
        let mut stored = doc();
        encrypt_config(&before, t, p, &mut stored);
        assert!(rewrap_config(&during, t, p, &mut stored).unwrap());
        assert!(!rewrap_config(&during, t, p, &mut stored).unwrap());
        assert!(!stored.to_string().contains(old.kid()));
        let mut plain = stored.clone();
        decrypt_config(&after, t, p, &mut plain).unwrap();
        assert_eq!(plain, doc());

        let record = json!({"email": "x@example.com", "n": 1});
        let b = Uuid::now_v7();
        let sealed = seal_record(&before, t, b, 7, &record);
        assert!(!sealed.to_string().contains("x@example.com"));
        assert_eq!(open_record(&during, t, b, 7, &sealed).unwrap(), record);
        assert!(open_record(&during, t, b, 8, &sealed).is_err());
        assert!(open_record(&after, t, b, 7, &sealed).is_err());
        // Captures stored before encryption read as they are.
        assert_eq!(open_record(&after, t, b, 7, &record).unwrap(), record);
    }
}
