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
//!
//! Every master key has a key id (`kid`): the first 8 hex characters of
//! SHA-256 over an HKDF output of the key, so it names the key without
//! revealing anything of it. Ciphertexts carry the kid of the key they
//! were made under. During a master key rotation the keyring also holds
//! the keys being retired — `SLUICE_MASTER_KEY_PREVIOUS` (comma-separated
//! keys), `SLUICE_MASTER_KEY_PREVIOUS_FILE` (one key per line) or, on the
//! embedded default, `<data_dir>/master.key.previous` — and decrypts with
//! whichever key a ciphertext names, while everything new is encrypted
//! under the current key (see `sluice master-key rotate`).

use anyhow::{Context, bail};
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// One master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; 32],
    kid: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.kid)
    }
}

impl MasterKey {
    pub fn new(bytes: [u8; 32]) -> MasterKey {
        let mut derived = [0u8; 32];
        hkdf_expand(&bytes, None, b"sluice/v1/key-id", &mut derived);
        let kid = hex::encode(&Sha256::digest(derived)[..4]);
        MasterKey { bytes, kid }
    }

    /// Parse 64 hex characters or base64 of 32 bytes.
    pub fn parse(text: &str) -> anyhow::Result<MasterKey> {
        Ok(MasterKey::new(parse_key(text)?))
    }

    /// A new random key.
    pub fn generate() -> MasterKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        MasterKey::new(key)
    }

    /// The key id: 8 hex characters.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as 64 hex characters, for writing a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    fn tenant_key(&self, tenant_id: Uuid, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf_expand(
            &self.bytes,
            Some(tenant_id.as_bytes()),
            format!("sluice/v1/{purpose}").as_bytes(),
            &mut out,
        );
        out
    }
}

fn hkdf_expand(ikm: &[u8], salt: Option<&[u8]>, info: &[u8], out: &mut [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    // 32 bytes is far below HKDF-SHA256's output limit, so this cannot fail.
    if hk.expand(info, out).is_err() {
        debug_assert!(false, "HKDF expand of 32 bytes failed");
    }
}

pub struct Keyring {
    current: MasterKey,
    /// Keys being retired: accepted for decryption only.
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(****)")
    }
}

impl Keyring {
    /// Load the master key(s) as described in the module docs.
    pub fn load(data_dir: &Path) -> anyhow::Result<Keyring> {
        Self::load_with(data_dir, |name| std::env::var(name).ok())
    }

    /// [`Keyring::load`] with the environment given as a lookup function.
    pub fn load_with(
        data_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Keyring> {
        let (current, embedded) = if let Some(value) = env("SLUICE_MASTER_KEY") {
            (
                MasterKey::parse(&value).context("SLUICE_MASTER_KEY")?,
                false,
            )
        } else if let Some(path) = env("SLUICE_MASTER_KEY_FILE") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading SLUICE_MASTER_KEY_FILE {path}"))?;
            (
                MasterKey::parse(&text).context("SLUICE_MASTER_KEY_FILE")?,
                false,
            )
        } else {
            (embedded_key(data_dir)?, true)
        };
        let mut previous = Vec::new();
        if let Some(value) = env("SLUICE_MASTER_KEY_PREVIOUS") {
            for (n, part) in value
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .enumerate()
            {
                previous.push(
                    MasterKey::parse(part)
                        .with_context(|| format!("SLUICE_MASTER_KEY_PREVIOUS, key {}", n + 1))?,
                );
            }
        }
        if let Some(path) = env("SLUICE_MASTER_KEY_PREVIOUS_FILE") {
            previous.extend(read_key_lines(Path::new(&path))?);
        }
        let retired = data_dir.join("master.key.previous");
        if embedded && retired.exists() {
            previous.extend(read_key_lines(&retired)?);
        }
        Ok(Keyring::with_previous(current, previous))
    }

    pub fn from_bytes(master: [u8; 32]) -> Keyring {
        Keyring::with_previous(MasterKey::new(master), Vec::new())
    }

    /// A keyring that encrypts under `current` and also decrypts what
    /// `previous` keys made.
    pub fn with_previous(current: MasterKey, previous: Vec<MasterKey>) -> Keyring {
        let previous = previous
            .into_iter()
            .filter(|k| k.kid != current.kid)
            .collect();
        Keyring { current, previous }
    }

    /// The keyring of a rotation to `new`: `new` encrypts, and every key
    /// of this keyring still decrypts.
    pub fn rotated_to(&self, new: MasterKey) -> Keyring {
        let previous = std::iter::once(self.current.clone())
            .chain(self.previous.iter().cloned())
            .collect();
        Keyring::with_previous(new, previous)
    }

    /// Whether the current key comes from `<data_dir>/master.key` (no
    /// `SLUICE_MASTER_KEY` or `SLUICE_MASTER_KEY_FILE` in `env`).
    pub fn is_embedded(env: impl Fn(&str) -> Option<String>) -> bool {
        env("SLUICE_MASTER_KEY").is_none() && env("SLUICE_MASTER_KEY_FILE").is_none()
    }

    /// Make `new` the embedded master key: the old `<data_dir>/master.key`
    /// is appended to `master.key.previous` (so what it encrypted stays
    /// readable until rotation has finished) and `new` replaces it, both
    /// with mode 0600.
    pub fn install_embedded(data_dir: &Path, new: &MasterKey) -> anyhow::Result<()> {
        use std::io::Write;
        let path = data_dir.join("master.key");
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let retired = data_dir.join("master.key.previous");
        if !retired.exists() {
            write_private(&retired, b"")?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&retired)
            .with_context(|| format!("opening {}", retired.display()))?;
        writeln!(file, "{}", old.trim())?;
        file.sync_all()?;
        let staged = data_dir.join("master.key.new");
        let _ = std::fs::remove_file(&staged);
        write_private(&staged, new.to_hex().as_bytes())?;
        std::fs::rename(&staged, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The id of the key new ciphertexts are made under.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// Ids of every key this keyring can decrypt with, current first.
    pub fn kids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.kid.clone())
            .collect()
    }

    /// A 32-byte key for `tenant_id` and `purpose` (`"hash"`, ...) under
    /// the current master key.
    pub fn tenant_key(&self, tenant_id: Uuid, purpose: &str) -> [u8; 32] {
        self.current.tenant_key(tenant_id, purpose)
    }

    /// The tenant key for `purpose` under the master key `kid`, if this
    /// keyring holds it.
    pub fn tenant_key_for(&self, kid: &str, tenant_id: Uuid, purpose: &str) -> Option<[u8; 32]> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == kid)
            .map(|k| k.tenant_key(tenant_id, purpose))
    }

    /// The tenant's key for pseudonymous hashes (redact `hash`, `ctx.hash`).
    pub fn tenant_hash_key(&self, tenant_id: Uuid) -> Arc<[u8]> {
        Arc::from(&self.tenant_key(tenant_id, "hash")[..])
    }
}

fn embedded_key(data_dir: &Path) -> anyhow::Result<MasterKey> {
    let path = data_dir.join("master.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return MasterKey::parse(&text).with_context(|| path.display().to_string());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let key = MasterKey::generate();
    write_private(&path, key.to_hex().as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "generated a master key in the data directory; set SLUICE_MASTER_KEY or SLUICE_MASTER_KEY_FILE in production"
    );
    Ok(key)
}

fn read_key_lines(path: &Path) -> anyhow::Result<Vec<MasterKey>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(n, line)| {
            MasterKey::parse(line).with_context(|| format!("{}, key {}", path.display(), n + 1))
        })
        .collect()
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

/// Create `path` with mode 0600 (it must not exist yet).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
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
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

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
    fn key_ids_name_keys_without_revealing_them() {
        let a = MasterKey::new([1; 32]);
        let b = MasterKey::new([2; 32]);
        assert_eq!(a.kid().len(), 8);
        assert_eq!(a.kid(), MasterKey::new([1; 32]).kid());
        assert_ne!(a.kid(), b.kid());
        assert!(!hex::encode([1u8; 32]).contains(a.kid()));
    }

    #[test]
    fn previous_keys_decrypt_and_the_current_one_encrypts() {
        let old = MasterKey::new([1; 32]);
        let new = MasterKey::new([2; 32]);
        let ring = Keyring::with_previous(new.clone(), vec![old.clone()]);
        let t = Uuid::now_v7();
        assert_eq!(ring.kid(), new.kid());
        assert_eq!(
            ring.kids(),
            vec![new.kid().to_owned(), old.kid().to_owned()]
        );
        assert_eq!(
            ring.tenant_key_for(old.kid(), t, "x").unwrap(),
            Keyring::from_bytes([1; 32]).tenant_key(t, "x")
        );
        assert_eq!(
            ring.tenant_key_for(new.kid(), t, "x").unwrap(),
            ring.tenant_key(t, "x")
        );
        assert!(ring.tenant_key_for("00000000", t, "x").is_none());
    }

    #[test]
    fn an_embedded_key_is_replaced_and_kept_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keyring::load_with(dir.path(), no_env).unwrap();
        let new = MasterKey::new([5; 32]);
        let during = first.rotated_to(new.clone());
        assert_eq!(during.kid(), new.kid());
        assert_eq!(during.kids()[1], first.kid());
        Keyring::install_embedded(dir.path(), &new).unwrap();
        let reloaded = Keyring::load_with(dir.path(), no_env).unwrap();
        assert_eq!(
            reloaded.kids(),
            vec![new.kid().to_owned(), first.kid().to_owned()]
        );
        assert!(Keyring::is_embedded(no_env));
    }

    #[test]
    fn environment_names_current_and_previous_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.keys");
        std::fs::write(&file, format!("# retired\n{}\n", "03".repeat(32))).unwrap();
        let env: HashMap<&str, String> = [
            ("SLUICE_MASTER_KEY", "01".repeat(32)),
            ("SLUICE_MASTER_KEY_PREVIOUS", "02".repeat(32)),
            (
                "SLUICE_MASTER_KEY_PREVIOUS_FILE",
                file.display().to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let ring = Keyring::load_with(dir.path(), |k| env.get(k).cloned()).unwrap();
        assert_eq!(ring.kid(), MasterKey::new([1; 32]).kid());
        assert_eq!(ring.kids().len(), 3);
        // No key file is generated when the environment names the key.
        assert!(!dir.path().join("master.key").exists());
        let bad: HashMap<&str, String> = [("SLUICE_MASTER_KEY_PREVIOUS", "nope".to_owned())]
            .into_iter()
            .collect();
        assert!(Keyring::load_with(dir.path(), |k| bad.get(k).cloned()).is_err());
    }

    #[test]
    fn generated_key_file_is_private_reused_and_announced() {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = tracing::subscriber::with_default(subscriber, || {
            (
                Keyring::load_with(dir.path(), no_env).unwrap(),
                Keyring::load_with(dir.path(), no_env).unwrap(),
            )
        });
        assert_eq!(a.kid(), b.kid());
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            log.matches("generated a master key").count(),
            1,
            "one warning, on generation only: {log}"
        );
        assert!(log.contains("WARN"), "{log}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A retired embedded key is picked up from master.key.previous.
        std::fs::write(dir.path().join("master.key.previous"), "04".repeat(32)).unwrap();
        let c = Keyring::load_with(dir.path(), no_env).unwrap();
        assert_eq!(c.kids().len(), 2);
        assert_eq!(c.kids()[1], MasterKey::new([4; 32]).kid());
    }
}
