//! `file`: NDJSON files under a root directory (the tenant's output dir).
//!
//! Each part of a batch goes to its own file, named by inserting
//! `-<batch_id>-<part:05>` before the extension, so the name is a pure
//! function of (`batch_id`, `part`): delivering a part again rewrites the
//! same file instead of adding a duplicate (R-DEL-1). Files are written
//! atomically — a temporary file in the same directory, written, fsynced,
//! renamed over the final name, then the directory fsynced — so a crash
//! leaves either the old file, the new one, or a stray temporary file, and
//! never a half-written file under the final name.
//!
//! The configured path is relative and checked again here (config
//! validation already refused `..`, absolute paths and the like). Parent
//! directories are created one level at a time; each existing level is
//! canonicalized and must stay inside the canonical root, so a symlink that
//! points out of the root is refused rather than followed. Filesystem work
//! is blocking, so it runs on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_config::FileDestinationSpec;
use sluice_config::pipeline::check_relative_path;
use sluice_core::{DeliveryError, Destination, OutputPart, Problem};
use uuid::Uuid;

#[derive(Clone)]
pub(crate) struct FileDestination {
    root: PathBuf,
    /// Directory components below the root.
    dirs: Vec<String>,
    /// File name before the inserted suffix, and the extension (with dot).
    stem: String,
    extension: String,
}

pub(crate) fn build(
    spec: &FileDestinationSpec,
    root: &Path,
) -> Result<FileDestination, Vec<Problem>> {
    check_relative_path(&spec.path).map_err(|message| vec![Problem::new("/path", message)])?;
    let mut segments: Vec<String> = spec.path.split('/').map(str::to_owned).collect();
    let file = segments.pop().unwrap_or_default();
    let (stem, extension) = match file.rfind('.') {
        Some(i) if i > 0 => (file[..i].to_owned(), file[i..].to_owned()),
        _ => (file, String::new()),
    };
    Ok(FileDestination {
        root: root.to_path_buf(),
        dirs: segments,
        stem,
        extension,
    })
}

impl FileDestination {
    /// The final file name of one part.
    fn file_name(&self, batch_id: Uuid, part: u32) -> String {
        format!("{}-{batch_id}-{part:05}{}", self.stem, self.extension)
    }

    /// Create (or find) the target directory without leaving the root.
    fn prepare_dir(&self) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.root)?;
        let root = fs::canonicalize(&self.root)?;
        let mut dir = root.clone();
        for segment in &self.dirs {
            let next = dir.join(segment);
            match fs::symlink_metadata(&next) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
            let real = fs::canonicalize(&next)?;
            if !real.starts_with(&root) {
                return Err(escape_error());
            }
            if !fs::metadata(&real)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "a parent of the output path is not a directory",
                ));
            }
            dir = real;
        }
        Ok(dir)
    }

    fn write_blocking(&self, part: &OutputPart) -> io::Result<()> {
        let dir = self.prepare_dir()?;
        let target = dir.join(self.file_name(part.batch_id, part.part));
        // The final name may exist (a redelivery); it must not be a
        // symlink, since rename would replace the link but a reader
        // following it would have seen data outside the root.
        if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(escape_error());
        }
        let tmp = dir.join(temp_name(&self.stem));
        let result = write_synced(&tmp, &part.ndjson).and_then(|()| fs::rename(&tmp, &target));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&dir)
    }

    fn healthcheck_blocking(&self) -> io::Result<()> {
        let dir = self.prepare_dir()?;
        let probe = dir.join(temp_name(".healthcheck"));
        write_synced(&probe, b"")?;
        fs::remove_file(&probe)
    }
}

fn escape_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the output path leaves the output directory",
    )
}

fn temp_name(stem: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{stem}.{}-{n}.tmp", std::process::id())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Map an I/O error to a delivery error without leaking absolute paths.
fn delivery_error(e: &io::Error) -> DeliveryError {
    let message = format!("file destination: {}", e.kind());
    match e.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::InvalidFilename => DeliveryError::permanent(match e.get_ref() {
            Some(inner) => format!("file destination: {inner}"),
            None => message,
        }),
        _ => DeliveryError::transient(message),
    }
}

#[async_trait::async_trait]
impl Destination for FileDestination {
    fn type_name(&self) -> &'static str {
        "file"
    }

    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        let this = self.clone();
        let part = part.clone();
        tokio::task::spawn_blocking(move || this.write_blocking(&part))
            .await
            .map_err(|_| DeliveryError::transient("file destination: write task failed"))?
            .map_err(|e| delivery_error(&e))
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.healthcheck_blocking())
            .await
            .map_err(|_| DeliveryError::transient("file destination: healthcheck task failed"))?
            .map_err(|e| delivery_error(&e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn dest(root: &Path, path: &str) -> FileDestination {
        build(
            &FileDestinationSpec {
                path: path.to_owned(),
            },
            root,
        )
        .map_err(|p| format!("{p:?}"))
        .unwrap()
    }

    fn part(batch_id: Uuid, part: u32, text: &str) -> OutputPart {
        OutputPart {
            tenant_id: Uuid::nil(),
            pipeline_id: Uuid::nil(),
            batch_id,
            part,
            ndjson: Bytes::from(text.to_owned()),
            record_count: text.lines().count() as u64,
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn names_insert_batch_and_part_before_the_extension() {
        let d = dest(Path::new("/r"), "events/web.ndjson");
        let b = Uuid::nil();
        assert_eq!(d.file_name(b, 7), format!("web-{b}-00007.ndjson"),);
        let plain = dest(Path::new("/r"), "out");
        assert_eq!(plain.file_name(b, 0), format!("out-{b}-00000"));
        let hidden = dest(Path::new("/r"), ".log");
        assert_eq!(hidden.file_name(b, 1), format!(".log-{b}-00001"));
        let multi = dest(Path::new("/r"), "a/b.tar.gz");
        assert_eq!(multi.file_name(b, 2), format!("b.tar-{b}-00002.gz"));
    }

    #[tokio::test]
    async fn writes_atomically_and_redelivery_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dest(tmp.path(), "events/web.ndjson");
        let batch = Uuid::now_v7();
        d.write(&part(batch, 0, "{\"a\":1}\n")).await.unwrap();
        d.write(&part(batch, 1, "{\"a\":2}\n")).await.unwrap();
        d.write(&part(batch, 0, "{\"a\":1}\n")).await.unwrap();
        let dir = tmp.path().join("events");
        assert_eq!(
            files_in(&dir),
            vec![
                format!("web-{batch}-00000.ndjson"),
                format!("web-{batch}-00001.ndjson")
            ],
            "no temporary files left, no duplicates"
        );
        let first = fs::read_to_string(dir.join(format!("web-{batch}-00000.ndjson"))).unwrap();
        assert_eq!(first, "{\"a\":1}\n");
        d.healthcheck().await.unwrap();
        assert_eq!(files_in(&dir).len(), 2, "healthcheck leaves nothing behind");
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_final_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dest(tmp.path(), "x/out.ndjson");
        // A directory where the file should go makes rename fail.
        let batch = Uuid::nil();
        fs::create_dir_all(tmp.path().join("x").join(d.file_name(batch, 0)).join("sub")).unwrap();
        assert!(d.write(&part(batch, 0, "{}\n")).await.is_err());
        let names = files_in(&tmp.path().join("x"));
        assert_eq!(names, vec![d.file_name(batch, 0)], "temporary file removed");
    }

    #[test]
    fn escaping_paths_are_refused_at_build() {
        for bad in ["../x.ndjson", "/etc/x", "a/../../x", "a//b", ""] {
            let spec = FileDestinationSpec { path: bad.into() };
            assert!(build(&spec, Path::new("/r")).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn symlinks_out_of_the_root_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let d = dest(&root, "link/sub/x.ndjson");
        let err = d.write(&part(Uuid::nil(), 0, "{}\n")).await.unwrap_err();
        assert_eq!(err.kind, sluice_core::FailureKind::Permanent);
        assert!(files_in(&outside).is_empty(), "nothing created outside");
        assert!(d.healthcheck().await.is_err());

        // A symlink that stays inside the root is fine.
        fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("inside")).unwrap();
        let ok = dest(&root, "inside/x.ndjson");
        ok.write(&part(Uuid::nil(), 0, "{}\n")).await.unwrap();
        assert_eq!(files_in(&root.join("real")).len(), 1);

        // A symlink at the final name is refused, not written through.
        let target = outside.join("victim");
        fs::write(&target, "keep").unwrap();
        let d2 = dest(&root, "y.ndjson");
        std::os::unix::fs::symlink(&target, root.join(d2.file_name(Uuid::nil(), 0))).unwrap();
        assert!(d2.write(&part(Uuid::nil(), 0, "{}\n")).await.is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }

    #[tokio::test]
    async fn healthcheck_fails_when_the_directory_cannot_be_made() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("file"), "").unwrap();
        let d = dest(tmp.path(), "file/x.ndjson");
        assert!(d.healthcheck().await.is_err());
    }
}
