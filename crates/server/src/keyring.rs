//! The master key and the per-tenant keys derived from it.
//!
//! The master key comes from `SLUICE_MASTER_KEY` (64 hex characters or
//! base64 of 32 bytes), from the file named by `SLUICE_MASTER_KEY_FILE`,
//! or — on the embedded default only — from `<data_dir>/master.key`,
//! generated with mode 0600 on first start (with a warning: a production
//! deployment brings its own, shared by every process). Tenant keys are
//! derived with HKDF-SHA256 (salt: the tenant id, info: the purpose), so
//! no tenant key is ever stored and one tenant's key says nothing about
//! another's.

use anyhow::{Context, bail};
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

pub struct Keyring {
    master: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(****)")
    }
}

impl Keyring {
    /// Load the master key as described in the module docs.
    pub fn load(data_dir: &Path) -> anyhow::Result<Keyring> {
        if let Ok(value) = std::env::var("SLUICE_MASTER_KEY") {
            return Ok(Keyring {
                master: parse_key(&value).context("SLUICE_MASTER_KEY")?,
            });
        }
        if let Ok(path) = std::env::var("SLUICE_MASTER_KEY_FILE") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading SLUICE_MASTER_KEY_FILE {path}"))?;
            return Ok(Keyring {
                master: parse_key(&text).context("SLUICE_MASTER_KEY_FILE")?,
            });
        }
        let path = data_dir.join("master.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(Keyring {
                master: parse_key(&text).with_context(|| path.display().to_string())?,
            });
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        write_private(&path, hex::encode(key).as_bytes())?;
        tracing::warn!(
            path = %path.display(),
            "generated a master key in the data directory; set SLUICE_MASTER_KEY or SLUICE_MASTER_KEY_FILE in production"
        );
        Ok(Keyring { master: key })
    }

    pub fn from_bytes(master: [u8; 32]) -> Keyring {
        Keyring { master }
    }

    /// A 32-byte key for `tenant_id` and `purpose` (`"hash"`, ...).
    pub fn tenant_key(&self, tenant_id: Uuid, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(tenant_id.as_bytes()), &self.master);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit, so this cannot fail.
        if hk
            .expand(format!("sluice/v1/{purpose}").as_bytes(), &mut out)
            .is_err()
        {
            debug_assert!(false, "HKDF expand of 32 bytes failed");
        }
        out
    }

    /// The tenant's key for pseudonymous hashes (redact `hash`, `ctx.hash`).
    pub fn tenant_hash_key(&self, tenant_id: Uuid) -> Arc<[u8]> {
        Arc::from(&self.tenant_key(tenant_id, "hash")[..])
    }
}

fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("expected 64 hex characters or base64 of 32 bytes")?
    };
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(key) => Ok(key),
        Err(_) => bail!("the master key must be 32 bytes"),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tenant_keys_are_stable_and_distinct() {
        let k = Keyring::from_bytes([7; 32]);
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(k.tenant_key(a, "hash"), k.tenant_key(a, "hash"));
        assert_ne!(k.tenant_key(a, "hash"), k.tenant_key(b, "hash"));
        assert_ne!(k.tenant_key(a, "hash"), k.tenant_key(a, "secrets"));
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [1; 32]);
        assert!(parse_key("short").is_err());
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY of the test: these variables are not set in the test env.
        let a = Keyring::load(dir.path()).unwrap();
        let b = Keyring::load(dir.path()).unwrap();
        assert_eq!(a.master, b.master);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
