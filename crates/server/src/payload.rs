//! Durable storage of batch payloads, through the `object_store` crate: a
//! local directory under the data dir by default, or any S3-compatible
//! store, so that API and worker processes on different machines share
//! one place (R-PROC-1).
//!
//! A payload is written as a multipart upload while the request body
//! streams in, so no body is ever held whole in memory. On the local
//! filesystem the completed file and its directory are then fsync'd:
//! `object_store` renames the staged file into place but does not sync,
//! and R-API-4 promises durability before the 202. On S3 a completed
//! upload is durable by the store's own guarantee.
//!
//! Payloads are encrypted at rest (R-SEC-2) with envelope encryption and
//! a streaming AEAD, so a payload is never held whole in memory, neither
//! to encrypt it nor to decrypt it. Each payload gets a random 256-bit
//! data key, wrapped (AES-256-GCM) by the tenant's `payload-keys` key with
//! the payload's object key as associated data, and the records are
//! encrypted in 64 KiB chunks with the STREAM construction
//! (AES-256-GCM; nonce = 7-byte random prefix, big-endian 32-bit chunk
//! counter, last-chunk flag: the `StreamBE32` layout of `aead::stream`),
//! so a reordered, dropped, duplicated or truncated chunk fails
//! authentication. The chunks are sealed with `ring`'s AES-GCM, several
//! times faster than a portable GHASH on this path. An object is:
//!
//! ```text
//! "SLP\x01" | kid (8 ASCII hex) | wrap nonce (12) | wrapped data key (48)
//!           | stream nonce prefix (7) | chunk 0 | chunk 1 | ... | last chunk
//! ```
//!
//! where every chunk but the last is 64 KiB of plaintext plus a 16-byte
//! tag and the last holds 0 to 64 KiB. A master key rotation re-wraps the
//! data key only ([`PayloadStore::rewrap_all`]): the object is rewritten
//! with a new header and the same chunks, never decrypted.

use crate::keyring::Keyring;
use crate::secrets::{open, seal};
use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, GetResultPayload, ObjectStore, WriteMultipart};
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Parts uploaded at the same time per payload.
const PART_CONCURRENCY: usize = 4;

/// Plaintext bytes per encrypted chunk.
const CHUNK: usize = 64 << 10;
/// AES-GCM tag bytes per chunk.
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"SLP\x01";
const KID_LEN: usize = 8;
const WRAPPED_LEN: usize = 12 + 32 + TAG;
const PREFIX_LEN: usize = 7;
/// Bytes before the first chunk.
pub const HEADER_LEN: usize = MAGIC.len() + KID_LEN + WRAPPED_LEN + PREFIX_LEN;
const PURPOSE: &str = "payload-keys";

#[derive(Clone)]
pub struct PayloadStore {
    store: Arc<dyn ObjectStore>,
    /// Set for local storage: the directory keys resolve under.
    local_root: Option<PathBuf>,
    keyring: Arc<Keyring>,
}

/// The tenant a payload belongs to: the first segment of its key
/// (`<tenant>/<pipeline>/<batch>.ndjson`).
fn tenant_of(key: &str) -> anyhow::Result<uuid::Uuid> {
    key.split('/')
        .next()
        .and_then(|t| uuid::Uuid::parse_str(t).ok())
        .context("a payload key starts with the tenant id")
}

fn wrap_aad(tenant: uuid::Uuid, key: &str) -> Vec<u8> {
    format!("sluice/payload/v1\0{tenant}\0{key}").into_bytes()
}

/// A fresh header and the stream encryptor for the payload under `key`.
fn new_header(keyring: &Keyring, key: &str) -> anyhow::Result<(Vec<u8>, Stream)> {
    let tenant = tenant_of(key)?;
    let mut data_key = [0u8; 32];
    rand::rng().fill_bytes(&mut data_key);
    let mut prefix = [0u8; PREFIX_LEN];
    rand::rng().fill_bytes(&mut prefix);
    let wrapped = seal(
        &keyring.tenant_key(tenant, PURPOSE),
        &wrap_aad(tenant, key),
        &data_key,
    );
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(keyring.kid().as_bytes());
    header.extend_from_slice(&wrapped);
    header.extend_from_slice(&prefix);
    debug_assert_eq!(header.len(), HEADER_LEN);
    let stream = Stream::new(&data_key, &prefix)?;
    Ok((header, stream))
}

/// The STREAM construction over AES-256-GCM: chunk `i` is sealed under
/// the nonce `prefix | i (u32, big-endian) | last`, so chunks cannot be
/// reordered, dropped or duplicated, and the end cannot be cut off.
struct Stream {
    key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    position: u32,
}

impl Stream {
    fn new(data_key: &[u8; 32], prefix: &[u8]) -> anyhow::Result<Stream> {
        let key = UnboundKey::new(&AES_256_GCM, data_key)
            .map_err(|_| anyhow::anyhow!("bad payload data key"))?;
        Ok(Stream {
            key: LessSafeKey::new(key),
            prefix: <[u8; PREFIX_LEN]>::try_from(prefix)
                .map_err(|_| anyhow::anyhow!("bad payload nonce prefix"))?,
            position: 0,
        })
    }

    /// The nonce of the current chunk; moves on to the next one.
    fn next_nonce(&mut self, last: bool) -> anyhow::Result<Nonce> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&self.position.to_be_bytes());
        nonce[NONCE_LEN - 1] = u8::from(last);
        self.position = self
            .position
            .checked_add(1)
            .context("payload too large to encrypt")?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Encrypt `chunk` in place and append its tag.
    fn seal(&mut self, chunk: &mut Vec<u8>, last: bool) -> anyhow::Result<()> {
        let nonce = self.next_nonce(last)?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::empty(), chunk)
            .map_err(|_| anyhow::anyhow!("payload chunk encryption failed"))
    }

    /// Decrypt a sealed chunk in place; returns the plaintext length.
    fn open(&mut self, chunk: &mut [u8], last: bool) -> Result<usize, ring::error::Unspecified> {
        let nonce = self
            .next_nonce(last)
            .map_err(|_| ring::error::Unspecified)?;
        Ok(self.key.open_in_place(nonce, Aad::empty(), chunk)?.len())
    }
}

/// Parse a header: (kid, wrapped data key, stream nonce prefix).
fn parse_header(header: &[u8]) -> anyhow::Result<(&str, &[u8], &[u8])> {
    if header.len() < HEADER_LEN || &header[..MAGIC.len()] != MAGIC {
        anyhow::bail!("the payload is not in Sluice's encrypted format");
    }
    let rest = &header[MAGIC.len()..HEADER_LEN];
    let (kid, rest) = rest.split_at(KID_LEN);
    let (wrapped, prefix) = rest.split_at(WRAPPED_LEN);
    let kid = std::str::from_utf8(kid).context("payload key id")?;
    Ok((kid, wrapped, prefix))
}

/// The data key of a payload, unwrapped with whichever master key the
/// header names.
fn unwrap_data_key(
    keyring: &Keyring,
    key: &str,
    kid: &str,
    wrapped: &[u8],
) -> anyhow::Result<[u8; 32]> {
    let tenant = tenant_of(key)?;
    let wrapping = keyring
        .tenant_key_for(kid, tenant, PURPOSE)
        .with_context(|| {
            format!(
                "the payload is encrypted under master key {kid}, which this process does not have"
            )
        })?;
    let data_key = open(&wrapping, &wrap_aad(tenant, key), wrapped)
        .map_err(|_| anyhow::anyhow!("the payload's data key failed authentication"))?;
    <[u8; 32]>::try_from(data_key.as_slice()).map_err(|_| anyhow::anyhow!("bad payload data key"))
}

impl PayloadStore {
    /// `url`: `file:///dir`, `s3://bucket/prefix`, or None for
    /// `<data_dir>/payloads`.
    pub fn open(
        url: Option<&str>,
        data_dir: &Path,
        keyring: Arc<Keyring>,
    ) -> anyhow::Result<PayloadStore> {
        match url {
            None => Self::local(&data_dir.join("payloads"), keyring),
            Some(url) if url.starts_with("file://") => {
                Self::local(Path::new(&url["file://".len()..]), keyring)
            }
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .context("configuring S3 payload storage")?;
                let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3,
                        prefix.trim_matches('/'),
                    ))
                };
                Ok(PayloadStore {
                    store,
                    local_root: None,
                    keyring,
                })
            }
            Some(other) => anyhow::bail!("unsupported storage url scheme: {other}"),
        }
    }

    fn local(root: &Path, keyring: Arc<Keyring>) -> anyhow::Result<PayloadStore> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .with_context(|| format!("opening {}", root.display()))?;
        Ok(PayloadStore {
            store: Arc::new(store),
            local_root: Some(root),
            keyring,
        })
    }

    /// Start writing the payload stored under `key`.
    /// Start writing the payload stored under `key`
    /// (`<tenant>/<pipeline>/<batch>.ndjson`), encrypted.
    pub async fn writer(&self, key: &str) -> anyhow::Result<PayloadWriter> {
        let path = ObjectPath::parse(key).context("payload key")?;
        let (header, encryptor) = new_header(&self.keyring, key)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .context("starting payload upload")?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        upload.write(&header);
        let mut chunk = Vec::with_capacity(CHUNK + TAG);
        chunk.clear();
        Ok(PayloadWriter {
            upload: Some(upload),
            local_file: self.local_root.as_ref().map(|root| root.join(key)),
            bytes: 0,
            encryptor: Some(encryptor),
            chunk,
        })
    }

    /// Stream the payload's plaintext, decrypted chunk by chunk. A
    /// modified, reordered or truncated payload ends the stream with an
    /// error.
    pub async fn read(
        &self,
        key: &str,
    ) -> anyhow::Result<BoxStream<'static, anyhow::Result<Bytes>>> {
        let path = ObjectPath::parse(key).context("payload key")?;
        let result = self.store.get(&path).await.context("opening payload")?;
        let state = ReadState {
            inner: byte_stream(result),
            buf: BytesMut::new(),
            decryptor: None,
            keyring: self.keyring.clone(),
            key: key.to_owned(),
            eof: false,
            done: false,
        };
        Ok(futures::stream::try_unfold(state, ReadState::next).boxed())
    }

    /// Re-wrap the data key of every payload not under the current master
    /// key (the chunks are copied as they are). Returns (re-wrapped,
    /// already current).
    pub async fn rewrap_all(&self) -> anyhow::Result<(u64, u64)> {
        let mut listing = self.store.list(None);
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.context("listing payloads")?;
            keys.push(meta.location.to_string());
        }
        drop(listing);
        let (mut rewrapped, mut current) = (0, 0);
        for key in keys {
            if self.rewrap(&key).await? {
                rewrapped += 1;
            } else {
                current += 1;
            }
        }
        Ok((rewrapped, current))
    }

    /// Re-wrap one payload's data key under the current master key; false
    /// when it already is (or the payload is gone).
    pub async fn rewrap(&self, key: &str) -> anyhow::Result<bool> {
        let path = ObjectPath::parse(key).context("payload key")?;
        let result = match self.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e).context("opening payload"),
        };
        let mut stream = byte_stream(result);
        let mut head = BytesMut::new();
        while head.len() < HEADER_LEN {
            match stream.next().await {
                Some(chunk) => head.extend_from_slice(&chunk.context("reading payload")?),
                None => anyhow::bail!("payload {key} is shorter than its header"),
            }
        }
        let (kid, wrapped, prefix) = parse_header(&head)?;
        if kid == self.keyring.kid() {
            return Ok(false);
        }
        let tenant = tenant_of(key)?;
        let data_key = unwrap_data_key(&self.keyring, key, kid, wrapped)
            .with_context(|| format!("payload {key}"))?;
        let rewrapped = seal(
            &self.keyring.tenant_key(tenant, PURPOSE),
            &wrap_aad(tenant, key),
            &data_key,
        );
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(self.keyring.kid().as_bytes());
        header.extend_from_slice(&rewrapped);
        header.extend_from_slice(prefix);
        let rest = head.split_off(HEADER_LEN);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .context("starting payload upload")?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        upload.write(&header);
        upload.write(&rest);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e).context("reading payload");
                }
            };
            upload.wait_for_capacity(PART_CONCURRENCY).await?;
            upload.write(&chunk);
        }
        upload.finish().await.context("completing payload upload")?;
        if let Some(root) = &self.local_root {
            let file = root.join(key);
            tokio::task::spawn_blocking(move || sync_file_and_dir(&file))
                .await
                .context("joining fsync")??;
        }
        Ok(true)
    }

    /// Delete every payload under `prefix` (a tenant's id: erasure).
    /// Returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let prefix = ObjectPath::parse(prefix).context("payload prefix")?;
        let mut listing = self.store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            keys.push(meta.context("listing payloads")?.location);
        }
        drop(listing);
        let mut deleted = 0;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).context("deleting payload"),
            }
        }
        Ok(deleted)
    }

    /// Delete a payload; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = ObjectPath::parse(key).context("payload key")?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).context("deleting payload"),
        }
    }

    /// Reachability check for `/readyz`.
    pub async fn healthcheck(&self) -> anyhow::Result<()> {
        let mut listing = self.store.list(None);
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e).context("listing payload storage"),
        }
    }
}

/// An upload in progress. Dropping it without [`PayloadWriter::finish`]
/// leaves no object under the key (a local staging file is removed by
/// [`PayloadWriter::abort`]).
pub struct PayloadWriter {
    upload: Option<WriteMultipart>,
    local_file: Option<PathBuf>,
    /// Plaintext bytes written.
    bytes: u64,
    encryptor: Option<Stream>,
    /// Plaintext of the chunk being filled (room for its tag).
    chunk: Vec<u8>,
}

impl PayloadWriter {
    /// Append bytes, waiting when too many parts are in flight.
    pub async fn write(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        if self.upload.is_none() {
            anyhow::bail!("payload writer already closed");
        }
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            // A full chunk is sealed only once more data follows: the
            // last chunk is sealed differently, by `finish`.
            if self.chunk.len() == CHUNK {
                self.seal_chunk().await?;
            }
            let take = (CHUNK - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    async fn seal_chunk(&mut self) -> anyhow::Result<()> {
        let (Some(upload), Some(encryptor)) = (self.upload.as_mut(), self.encryptor.as_mut())
        else {
            anyhow::bail!("payload writer already closed");
        };
        encryptor.seal(&mut self.chunk, false)?;
        upload
            .wait_for_capacity(PART_CONCURRENCY)
            .await
            .context("uploading payload part")?;
        upload.write(&self.chunk);
        self.chunk.clear();
        Ok(())
    }

    /// Plaintext bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Complete the upload and make it durable.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        let (Some(mut upload), Some(mut encryptor)) = (self.upload.take(), self.encryptor.take())
        else {
            anyhow::bail!("payload writer already closed");
        };
        if let Err(e) = encryptor.seal(&mut self.chunk, true) {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload.write(&self.chunk);
        upload.finish().await.context("completing payload upload")?;
        if let Some(file) = self.local_file.take() {
            tokio::task::spawn_blocking(move || sync_file_and_dir(&file))
                .await
                .context("joining fsync")??;
        }
        Ok(self.bytes)
    }

    /// Cancel the upload.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take()
            && let Err(error) = upload.abort().await
        {
            tracing::warn!(%error, "aborting payload upload failed");
        }
    }
}

/// Bytes read per blocking task from a local payload file.
const READ_BYTES: u64 = 1 << 20;

/// The bytes of a payload. `GetResult::into_stream` reads a local file
/// 8 KiB per blocking task: some 60 wake-ups of another thread for a batch
/// of 1,000 events, which on two cores showed up as scheduler time. A
/// local file is read here a MiB at a time (see docs/performance.md).
fn byte_stream(result: GetResult) -> BoxStream<'static, anyhow::Result<Bytes>> {
    let GetResult { payload, range, .. } = result;
    match payload {
        GetResultPayload::File(file, path) => {
            let start = range.start;
            let state = (file, path, range.end - range.start, start != 0);
            futures::stream::try_unfold(state, move |(mut file, path, left, seek)| async move {
                if left == 0 {
                    return Ok(None);
                }
                tokio::task::spawn_blocking(move || {
                    if seek {
                        file.seek(SeekFrom::Start(start))
                            .with_context(|| format!("seeking in {}", path.display()))?;
                    }
                    let want = left.min(READ_BYTES);
                    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
                    (&mut file)
                        .take(want)
                        .read_to_end(&mut buf)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if (buf.len() as u64) < want {
                        anyhow::bail!("{} ended before its recorded size", path.display());
                    }
                    Ok(Some((Bytes::from(buf), (file, path, left - want, false))))
                })
                .await
                .context("joining a payload read")?
            })
            .boxed()
        }
        GetResultPayload::Stream(stream) => stream.map_err(anyhow::Error::from).boxed(),
    }
}

/// The decrypting side of [`PayloadStore::read`].
struct ReadState {
    inner: BoxStream<'static, anyhow::Result<Bytes>>,
    /// Ciphertext received and not yet decrypted.
    buf: BytesMut,
    decryptor: Option<Stream>,
    keyring: Arc<Keyring>,
    key: String,
    eof: bool,
    done: bool,
}

impl ReadState {
    async fn next(mut self) -> anyhow::Result<Option<(Bytes, ReadState)>> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.decryptor.as_mut() {
                None if self.buf.len() >= HEADER_LEN => {
                    let (kid, wrapped, prefix) = parse_header(&self.buf)?;
                    let data_key = unwrap_data_key(&self.keyring, &self.key, kid, wrapped)?;
                    self.decryptor = Some(Stream::new(&data_key, prefix)?);
                    self.buf.advance(HEADER_LEN);
                    continue;
                }
                None if self.eof => anyhow::bail!("the payload is shorter than its header"),
                None => {}
                // More than one sealed chunk buffered: the first is not
                // the last one.
                Some(decryptor) if self.buf.len() > CHUNK + TAG => {
                    let mut chunk = self.buf.split_to(CHUNK + TAG);
                    let len = decryptor.open(&mut chunk, false).map_err(|_| {
                        anyhow::anyhow!(
                            "a payload chunk failed authentication (modified, reordered or truncated)"
                        )
                    })?;
                    chunk.truncate(len);
                    return Ok(Some((chunk.freeze(), self)));
                }
                Some(_) if self.eof => {
                    self.done = true;
                    let Some(mut decryptor) = self.decryptor.take() else {
                        return Ok(None);
                    };
                    if self.buf.len() < TAG {
                        anyhow::bail!("the payload is truncated");
                    }
                    let mut chunk = std::mem::take(&mut self.buf);
                    let len = decryptor.open(&mut chunk, true).map_err(|_| {
                        anyhow::anyhow!(
                            "the payload's last chunk failed authentication (modified or truncated)"
                        )
                    })?;
                    if len == 0 {
                        return Ok(None);
                    }
                    chunk.truncate(len);
                    return Ok(Some((chunk.freeze(), self)));
                }
                Some(_) => {}
            }
            match self.inner.next().await {
                Some(chunk) => self
                    .buf
                    .extend_from_slice(&chunk.context("reading payload")?),
                None => self.eof = true,
            }
        }
    }
}

fn sync_file_and_dir(file: &Path) -> anyhow::Result<()> {
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", file.display()))?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keyring::MasterKey;

    fn ring(n: u8) -> Arc<Keyring> {
        Arc::new(Keyring::from_bytes([n; 32]))
    }

    fn key_for(tenant: uuid::Uuid, name: &str) -> String {
        format!("{tenant}/{}/{name}.ndjson", uuid::Uuid::now_v7())
    }

    /// The chunks are the `aead::stream` STREAM-BE32 layout over
    /// AES-256-GCM: payloads written by that implementation read back,
    /// and the other way round.
    #[test]
    fn chunks_are_aead_stream_be32() {
        use aes_gcm::Aes256Gcm;
        use aes_gcm::aead::KeyInit;
        use aes_gcm::aead::generic_array::GenericArray;
        use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
        let data_key = [7u8; 32];
        let prefix = [9u8; PREFIX_LEN];
        let plain: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 33], vec![]];
        let reference = || Aes256Gcm::new(GenericArray::from_slice(&data_key));

        // Theirs -> ours.
        let mut enc = EncryptorBE32::from_aead(reference(), GenericArray::from_slice(&prefix));
        let mut sealed = Vec::new();
        for p in &plain[..2] {
            let mut c = p.clone();
            enc.encrypt_next_in_place(b"", &mut c).unwrap();
            sealed.push(c);
        }
        let mut last = plain[2].clone();
        enc.encrypt_last_in_place(b"", &mut last).unwrap();
        sealed.push(last);
        let mut ours = Stream::new(&data_key, &prefix).unwrap();
        for (i, c) in sealed.iter().enumerate() {
            let mut c = c.clone();
            let n = ours.open(&mut c, i == 2).unwrap();
            assert_eq!(&c[..n], &plain[i][..]);
        }

        // Ours -> theirs, and a chunk out of place fails.
        let mut ours = Stream::new(&data_key, &prefix).unwrap();
        let mut sealed = Vec::new();
        for (i, p) in plain.iter().enumerate() {
            let mut c = p.clone();
            ours.seal(&mut c, i == 2).unwrap();
            sealed.push(c);
        }
        let mut dec = DecryptorBE32::from_aead(reference(), GenericArray::from_slice(&prefix));
        for (i, c) in sealed.iter().enumerate().take(2) {
            let mut c = c.clone();
            dec.decrypt_next_in_place(b"", &mut c).unwrap();
            assert_eq!(c, plain[i]);
        }
        let mut c = sealed[2].clone();
        dec.decrypt_last_in_place(b"", &mut c).unwrap();
        assert!(c.is_empty());
        let mut swapped = Stream::new(&data_key, &prefix).unwrap();
        assert!(swapped.open(&mut sealed[1].clone(), false).is_err());
        let mut early_end = Stream::new(&data_key, &prefix).unwrap();
        assert!(early_end.open(&mut sealed[0].clone(), true).is_err());
    }

    async fn read_all(store: &PayloadStore, key: &str) -> anyhow::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = store.read(key).await?.try_collect().await?;
        Ok(chunks.concat())
    }

    /// Lines `{"n":i,"canary":"PLAINTEXT-CANARY"}` up to `len` bytes.
    fn payload(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(
                format!("{{\"n\":{i},\"canary\":\"PLAINTEXT-CANARY\"}}\n").as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[tokio::test]
    async fn local_payloads_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path(), ring(1)).unwrap();
        let key = key_for(uuid::Uuid::now_v7(), "b");
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"{\"a\":1}\n").await.unwrap();
        w.write(b"{\"a\":2}\n").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 16);
        let file = dir.path().join("payloads").join(&key);
        assert_eq!(
            std::fs::metadata(&file).unwrap().len() as usize,
            HEADER_LEN + 16 + TAG
        );
        assert_eq!(
            read_all(&store, &key).await.unwrap(),
            b"{\"a\":1}\n{\"a\":2}\n"
        );
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.read(&key).await.is_err());
        store.healthcheck().await.unwrap();
    }

    #[tokio::test]
    async fn every_size_round_trips_and_no_plaintext_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path(), ring(1)).unwrap();
        let tenant = uuid::Uuid::now_v7();
        // The last sizes make files that are read in more than one piece.
        let read = READ_BYTES as usize;
        for len in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            3 * CHUNK + 17,
            read,
            2 * read + 5,
        ] {
            let data = payload(len);
            let key = key_for(tenant, &format!("len{len}"));
            let mut w = store.writer(&key).await.unwrap();
            // Odd write sizes, so chunk boundaries fall inside writes.
            for part in data.chunks(7_777) {
                w.write(part).await.unwrap();
            }
            assert_eq!(w.finish().await.unwrap(), len as u64);
            let on_disk = std::fs::read(dir.path().join("payloads").join(&key)).unwrap();
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(on_disk.len(), HEADER_LEN + len + chunks * TAG, "len {len}");
            assert!(
                !on_disk.windows(16).any(|w| w == b"PLAINTEXT-CANARY"),
                "plaintext on disk (len {len})"
            );
            assert_eq!(read_all(&store, &key).await.unwrap(), data, "len {len}");
        }
    }

    #[tokio::test]
    async fn truncation_reordering_and_tampering_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path(), ring(1)).unwrap();
        let key = key_for(uuid::Uuid::now_v7(), "t");
        let data = payload(3 * CHUNK + 100);
        let mut w = store.writer(&key).await.unwrap();
        w.write(&data).await.unwrap();
        w.finish().await.unwrap();
        let file = dir.path().join("payloads").join(&key);
        let good = std::fs::read(&file).unwrap();
        let sealed = CHUNK + TAG;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        // Cut at a chunk boundary: the new last chunk was not sealed last.
        cases.push((
            "truncated at a chunk",
            good[..HEADER_LEN + 2 * sealed].to_vec(),
        ));
        cases.push(("truncated inside a chunk", good[..good.len() - 5].to_vec()));
        cases.push(("header only", good[..HEADER_LEN].to_vec()));
        let mut swapped = good[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&good[HEADER_LEN + sealed..HEADER_LEN + 2 * sealed]);
        swapped.extend_from_slice(&good[HEADER_LEN..HEADER_LEN + sealed]);
        swapped.extend_from_slice(&good[HEADER_LEN + 2 * sealed..]);
        cases.push(("reordered", swapped));
        let mut flipped = good.clone();
        flipped[HEADER_LEN + sealed + 10] ^= 1;
        cases.push(("bit flipped", flipped));
        let mut bad_header = good.clone();
        bad_header[20] ^= 1;
        cases.push(("wrapped key modified", bad_header));
        for (what, bytes) in cases {
            std::fs::write(&file, &bytes).unwrap();
            assert!(
                read_all(&store, &key).await.is_err(),
                "{what} was not detected"
            );
        }
        // Copied under another key: the wrapped data key is bound to it.
        std::fs::write(&file, &good).unwrap();
        let other = key_for(uuid::Uuid::now_v7(), "copy");
        let other_file = dir.path().join("payloads").join(&other);
        std::fs::create_dir_all(other_file.parent().unwrap()).unwrap();
        std::fs::write(&other_file, &good).unwrap();
        assert!(read_all(&store, &other).await.is_err());
        assert_eq!(read_all(&store, &key).await.unwrap(), data);
        // Another master key cannot read it.
        let foreign = PayloadStore::open(None, dir.path(), ring(2)).unwrap();
        assert!(read_all(&foreign, &key).await.is_err());
    }

    #[tokio::test]
    async fn rotation_rewraps_the_data_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let old = MasterKey::new([1; 32]);
        let new = MasterKey::new([2; 32]);
        let before = PayloadStore::open(
            None,
            dir.path(),
            Arc::new(Keyring::with_previous(old.clone(), vec![])),
        )
        .unwrap();
        let key = key_for(uuid::Uuid::now_v7(), "r");
        let data = payload(2 * CHUNK + 3);
        let mut w = before.writer(&key).await.unwrap();
        w.write(&data).await.unwrap();
        w.finish().await.unwrap();
        let file = dir.path().join("payloads").join(&key);
        let original = std::fs::read(&file).unwrap();

        let during = PayloadStore::open(
            None,
            dir.path(),
            Arc::new(Keyring::with_previous(new.clone(), vec![old.clone()])),
        )
        .unwrap();
        assert_eq!(read_all(&during, &key).await.unwrap(), data);
        assert_eq!(during.rewrap_all().await.unwrap(), (1, 0));
        assert_eq!(during.rewrap_all().await.unwrap(), (0, 1));
        let rewritten = std::fs::read(&file).unwrap();
        assert_eq!(
            &rewritten[HEADER_LEN..],
            &original[HEADER_LEN..],
            "chunks are copied, not re-encrypted"
        );
        assert_eq!(&rewritten[4..12], new.kid().as_bytes());

        let after = PayloadStore::open(
            None,
            dir.path(),
            Arc::new(Keyring::with_previous(new, vec![])),
        )
        .unwrap();
        assert_eq!(read_all(&after, &key).await.unwrap(), data);
        assert!(read_all(&before, &key).await.is_err());
    }

    #[tokio::test]
    async fn aborted_payloads_leave_nothing_and_prefixes_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path(), ring(1)).unwrap();
        let tenant = uuid::Uuid::now_v7();
        let key = key_for(tenant, "x");
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"{}\n").await.unwrap();
        w.abort().await;
        assert!(store.read(&key).await.is_err());
        let other = key_for(uuid::Uuid::now_v7(), "keep");
        for k in [key_for(tenant, "a"), key_for(tenant, "b"), other.clone()] {
            let mut w = store.writer(&k).await.unwrap();
            w.write(b"{}\n").await.unwrap();
            w.finish().await.unwrap();
        }
        assert_eq!(store.delete_prefix(&tenant.to_string()).await.unwrap(), 2);
        assert_eq!(read_all(&store, &other).await.unwrap(), b"{}\n");
    }
}
