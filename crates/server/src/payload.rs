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

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Parts uploaded at the same time per payload.
const PART_CONCURRENCY: usize = 4;

#[derive(Clone)]
pub struct PayloadStore {
    store: Arc<dyn ObjectStore>,
    /// Set for local storage: the directory keys resolve under.
    local_root: Option<PathBuf>,
}

impl PayloadStore {
    /// `url`: `file:///dir`, `s3://bucket/prefix`, or None for
    /// `<data_dir>/payloads`.
    pub fn open(url: Option<&str>, data_dir: &Path) -> anyhow::Result<PayloadStore> {
        match url {
            None => Self::local(&data_dir.join("payloads")),
            Some(url) if url.starts_with("file://") => {
                Self::local(Path::new(&url["file://".len()..]))
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
                })
            }
            Some(other) => anyhow::bail!("unsupported storage url scheme: {other}"),
        }
    }

    fn local(root: &Path) -> anyhow::Result<PayloadStore> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .with_context(|| format!("opening {}", root.display()))?;
        Ok(PayloadStore {
            store: Arc::new(store),
            local_root: Some(root),
        })
    }

    /// Start writing the payload stored under `key`.
    pub async fn writer(&self, key: &str) -> anyhow::Result<PayloadWriter> {
        let path = ObjectPath::parse(key).context("payload key")?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .context("starting payload upload")?;
        Ok(PayloadWriter {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            local_file: self.local_root.as_ref().map(|root| root.join(key)),
            bytes: 0,
        })
    }

    /// Stream the payload's bytes.
    pub async fn read(
        &self,
        key: &str,
    ) -> anyhow::Result<BoxStream<'static, anyhow::Result<Bytes>>> {
        let path = ObjectPath::parse(key).context("payload key")?;
        let result = self.store.get(&path).await.context("opening payload")?;
        Ok(result.into_stream().map_err(anyhow::Error::from).boxed())
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
    bytes: u64,
}

impl PayloadWriter {
    /// Append bytes, waiting when too many parts are in flight.
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            anyhow::bail!("payload writer already closed");
        };
        upload
            .wait_for_capacity(PART_CONCURRENCY)
            .await
            .context("uploading payload part")?;
        upload.write(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Complete the upload and make it durable.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        let Some(upload) = self.upload.take() else {
            anyhow::bail!("payload writer already closed");
        };
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

    #[tokio::test]
    async fn local_payloads_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path()).unwrap();
        let mut w = store.writer("t/p/b.ndjson").await.unwrap();
        w.write(b"{\"a\":1}\n").await.unwrap();
        w.write(b"{\"a\":2}\n").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 16);
        assert!(dir.path().join("payloads/t/p/b.ndjson").exists());
        let chunks: Vec<Bytes> = store
            .read("t/p/b.ndjson")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.concat(), b"{\"a\":1}\n{\"a\":2}\n");
        store.delete("t/p/b.ndjson").await.unwrap();
        store.delete("t/p/b.ndjson").await.unwrap();
        assert!(store.read("t/p/b.ndjson").await.is_err());
        store.healthcheck().await.unwrap();
    }

    #[tokio::test]
    async fn aborted_payloads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = PayloadStore::open(None, dir.path()).unwrap();
        let mut w = store.writer("t/p/x.ndjson").await.unwrap();
        w.write(b"{}\n").await.unwrap();
        w.abort().await;
        assert!(store.read("t/p/x.ndjson").await.is_err());
    }
}
