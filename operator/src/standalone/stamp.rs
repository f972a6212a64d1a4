//! File stamps: a file whose stamp is the one of its last read has the same
//! content, so a pass can skip reading it (thousands of files per pass
//! otherwise). The stamp is what changes whenever the content can have
//! changed: inode, size, and modification and change times (ctime cannot be
//! set back by a user).
//!
//! A file changed twice within one tick of the filesystem's clock keeps its
//! times (git's "racy clean" problem): a stamp is only trusted once the file
//! has been quiet for [`SETTLE_SECONDS`]; until then the file is read.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How long a file must be untouched before its stamp is trusted.
pub const SETTLE_SECONDS: i64 = 2;

/// What changes whenever a file's content can have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The file's stamp (following symlinks) and whether it has settled;
    /// `None` when it cannot be stat'ed (absent, say).
    pub fn of(path: &Path) -> Option<(Stamp, bool)> {
        let m = fs::metadata(path).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let settled = now.is_some_and(|now| {
            m.mtime() <= now - SETTLE_SECONDS && m.ctime() <= now - SETTLE_SECONDS
        });
        let stamp = Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        };
        Some((stamp, settled))
    }
}

/// The settled stamp of a file as it was when last read: tells whether it
/// must be read again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastRead(Option<Stamp>);

impl LastRead {
    /// Whether `path` must be read: it was never read, changed since, or has
    /// not settled. Records its current stamp, so call it right before the
    /// read (a change during the read then moves the stamp again).
    pub fn must_read(&mut self, path: &Path) -> bool {
        let now = Stamp::of(path).and_then(|(s, settled)| settled.then_some(s));
        let same = now.is_some() && now == self.0;
        self.0 = now;
        !same
    }
}
