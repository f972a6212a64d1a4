//! File helpers for the state directory: JSON reads that tell "absent" from
//! "broken", and atomic writes (temp file in the same directory, made
//! durable, renamed over the target), one at a time or as a [`Batch`].

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads a JSON file: `Ok(None)` when it does not exist. Files written by
/// other processes (daemons) are read only up to
/// [`MAX_NODE_FILE_BYTES`](weft_api::validation::MAX_NODE_FILE_BYTES): a
/// larger one is an error, never a large allocation.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    read_bytes(path)?
        .map(|body| parse_json(path, &body))
        .transpose()
}

/// Reads a file written by another process whole, as [`read_json`] does:
/// `Ok(None)` when it does not exist, an error past
/// [`MAX_NODE_FILE_BYTES`](weft_api::validation::MAX_NODE_FILE_BYTES).
pub fn read_bytes(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let limit = weft_api::validation::MAX_NODE_FILE_BYTES;
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut body = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {}", path.display()))?;
    if body.len() as u64 > limit {
        anyhow::bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(Some(body))
}

/// Parses the JSON `body` read from `path`.
pub fn parse_json<T: DeserializeOwned>(path: &Path, body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).with_context(|| format!("parsing {}", path.display()))
}

/// `value` as written to disk: pretty JSON and a final newline.
pub fn json_bytes<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).context("serialising")?;
    body.push(b'\n');
    Ok(body)
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    write_atomic(path, &json_bytes(value)?)
}

/// Writes `body` to `path` atomically but not durably: for views rebuilt
/// at every start (a crash may leave the previous version), where a sync
/// would cost more than the write (a 1 MB file on a busy disk).
pub fn write_volatile(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let (tmp, _f) = write_temp(path, body, "")?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming to {}", path.display()))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Writes bytes to `path` atomically: readers see the old or the new file, never a part.
pub fn write_atomic(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let (tmp, f) = write_temp(path, body, "")?;
    let result = f
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Some(d) = path.parent().and_then(|d| fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
    result
}

/// Writes `body` to a new temp file beside `path` (creating the directory),
/// named after it, this process and `suffix`. Not synced; removed again on
/// error.
fn write_temp(path: &Path, body: &[u8], suffix: &str) -> anyhow::Result<(PathBuf, fs::File)> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{file_name}.tmp.{}{suffix}", std::process::id()));
    // 0600 like every state file: what the operator writes is readable by
    // root (the daemons) and nobody else.
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))
        .and_then(|mut f| {
            f.write_all(body)
                .with_context(|| format!("writing {}", tmp.display()))?;
            Ok(f)
        });
    match written {
        Ok(f) => Ok((tmp, f)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Atomic writes made durable together. A large batch (a first pass writes
/// thousands of files) is synced with one `syncfs` per filesystem instead
/// of an fsync of every file and directory; a small one (a pass with one
/// change writes a few) with an fsync of each file and directory, since
/// `syncfs` also flushes whatever else is pending on the filesystem (20-50
/// ms on a busy disk, whatever the batch holds). [`Batch::stage`] writes
/// each file to a temp file beside its target; [`Batch::commit`] syncs them
/// all, renames them over their targets in the order staged, and syncs
/// again (the directories) so the renames are durable too. Once `commit`
/// returns, every file it reports written is durable and was replaced
/// atomically, as with [`write_atomic`]. Temp files of a batch dropped
/// uncommitted are removed.
#[derive(Default)]
pub struct Batch {
    staged: Vec<(PathBuf, PathBuf)>,
    /// One open file per filesystem written to (by device), to sync it.
    filesystems: Vec<(u64, fs::File)>,
    /// The staged temp files, open, while the batch is small.
    open: Vec<fs::File>,
}

/// Up to this many files a batch syncs file by file.
const SMALL_BATCH: usize = 16;

impl Batch {
    /// Writes `body` for `path` to a temp file; nothing is visible at `path`
    /// before [`Batch::commit`].
    pub fn stage(&mut self, path: &Path, body: &[u8]) -> anyhow::Result<()> {
        // The index keeps two stagings of one path apart (the last wins).
        let (tmp, f) = write_temp(path, body, &format!(".{}", self.staged.len()))?;
        let dev = match f.metadata() {
            Ok(m) => m.dev(),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("inspecting {}", tmp.display()));
            }
        };
        if self.staged.len() < SMALL_BATCH {
            match f.try_clone() {
                Ok(g) => self.open.push(g),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("opening {}", tmp.display()));
                }
            }
        } else {
            self.open.clear();
        }
        if !self.filesystems.iter().any(|(d, _)| *d == dev) {
            self.filesystems.push((dev, f));
        }
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    fn small(&self) -> bool {
        self.staged.len() <= SMALL_BATCH && self.open.len() == self.staged.len()
    }

    /// Makes every staged file durable and puts it in place, in the order
    /// staged. Returns, in that order, whether each one was put in place.
    pub fn commit(mut self) -> Vec<anyhow::Result<()>> {
        let small = self.small();
        let staged = std::mem::take(&mut self.staged);
        let synced = if small {
            self.open
                .iter()
                .try_for_each(fs::File::sync_all)
                .context("fsync")
        } else {
            self.sync()
        };
        if let Err(e) = synced {
            for (tmp, _) in &staged {
                let _ = fs::remove_file(tmp);
            }
            return staged
                .iter()
                .map(|(tmp, _)| Err(anyhow::anyhow!("syncing {}: {e:#}", tmp.display())))
                .collect();
        }
        let results: Vec<anyhow::Result<()>> = staged
            .iter()
            .map(|(tmp, path)| {
                fs::rename(tmp, path).with_context(|| format!("renaming to {}", path.display()))
            })
            .collect();
        for ((tmp, _), r) in staged.iter().zip(&results) {
            if r.is_err() {
                let _ = fs::remove_file(tmp);
            }
        }
        // The renames are directory changes: durable with the next sync, as
        // an fsync of each directory would make them (errors ignored, as
        // `write_atomic` ignores the directory's).
        if small {
            let dirs: std::collections::BTreeSet<&Path> =
                staged.iter().filter_map(|(_, p)| p.parent()).collect();
            for d in dirs {
                if let Ok(d) = fs::File::open(d) {
                    let _ = d.sync_all();
                }
            }
        } else {
            let _ = self.sync();
        }
        results
    }

    fn sync(&self) -> anyhow::Result<()> {
        for (_, f) in &self.filesystems {
            nix::unistd::syncfs(f).context("syncfs")?;
        }
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect()
    }

    #[test]
    fn state_files_are_written_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let (one, batched) = (dir.path().join("one.json"), dir.path().join("b/two.json"));
        write_atomic(&one, b"{}").unwrap();
        let mut batch = Batch::default();
        batch.stage(&batched, b"{}").unwrap();
        assert!(batch.commit().iter().all(Result::is_ok));
        for path in [one, batched] {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }

    #[test]
    fn a_batch_puts_files_in_place_only_on_commit_and_reports_each() {
        let dir = tempfile::TempDir::new().unwrap();
        let (a, b, c) = (
            dir.path().join("a.json"),
            dir.path().join("b.json"),
            dir.path().join("sub/c.json"),
        );
        fs::write(&a, "old").unwrap();
        // A directory in the way: its rename fails, the others still land.
        fs::create_dir_all(b.join("x")).unwrap();
        let mut batch = Batch::default();
        for p in [&a, &b, &c] {
            batch.stage(p, b"new").unwrap();
        }
        assert_eq!(fs::read(&a).unwrap(), b"old");
        assert!(!c.exists());
        let results = batch.commit();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let e = results[1].as_ref().unwrap_err();
        assert!(format!("{e:#}").contains("renaming to"), "{e:#}");
        assert_eq!(fs::read(&a).unwrap(), b"new");
        assert_eq!(fs::read(&c).unwrap(), b"new");
        assert!(temp_files(dir.path()).is_empty());
        assert!(temp_files(&dir.path().join("sub")).is_empty());

        // Past the small-batch size, synced per filesystem: all land too.
        let mut batch = Batch::default();
        let many: Vec<PathBuf> = (0..SMALL_BATCH + 3)
            .map(|i| dir.path().join(format!("many/{i}.json")))
            .collect();
        for p in &many {
            batch.stage(p, b"many").unwrap();
        }
        assert!(!batch.small());
        assert!(batch.commit().iter().all(Result::is_ok));
        assert!(many.iter().all(|p| fs::read(p).unwrap() == b"many"));
        assert!(temp_files(&dir.path().join("many")).is_empty());

        // Dropped uncommitted: nothing changes, no temp file stays.
        let mut batch = Batch::default();
        batch.stage(&a, b"newer").unwrap();
        drop(batch);
        assert_eq!(fs::read(&a).unwrap(), b"new");
        assert!(temp_files(dir.path()).is_empty());
    }
}
