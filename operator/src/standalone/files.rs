//! File helpers for the state directory: JSON reads that tell "absent" from
//! "broken", and atomic writes (temp file in the same directory, fsync, rename).

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads a JSON file: `Ok(None)` when it does not exist. Files written by
/// other processes (daemons) are read only up to
/// [`MAX_NODE_FILE_BYTES`](weft_api::validation::MAX_NODE_FILE_BYTES): a
/// larger one is an error, never a large allocation.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
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
    serde_json::from_slice(&body)
        .map(Some)
        .with_context(|| format!("parsing {}", path.display()))
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut body = serde_json::to_vec_pretty(value).context("serialising")?;
    body.push(b'\n');
    write_atomic(path, &body)
}

/// Writes bytes to `path` atomically: readers see the old or the new file, never a part.
pub fn write_atomic(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(body)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    result
}
