//! Network namespaces: entering one for the span of a closure (and always
//! coming back), and creating/removing persistent named namespaces the way
//! `ip netns add/del` does (a bind mount of the namespace file under the run
//! directory, which is made a shared mount so other mount namespaces see it).

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// The calling thread's current network namespace.
pub(crate) const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Opens the network namespace of the calling thread.
pub(crate) fn current() -> Result<File> {
    File::open(THREAD_NETNS).with_context(|| format!("open {THREAD_NETNS}"))
}

/// Opens `path` if it is a network namespace file (an nsfs bind mount).
/// `Ok(None)` when it does not exist or is a leftover plain file (a namespace
/// that was unmounted behind our back).
pub(crate) fn open(path: &Path) -> Result<Option<File>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let st = fstatfs(f.as_fd()).with_context(|| format!("statfs {}", path.display()))?;
    Ok((st.filesystem_type() == NSFS_MAGIC).then_some(f))
}

/// Switches the calling thread back to the namespace it came from on drop.
struct Restore(File);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in the wrong namespace would silently program
            // the wrong kernel objects from now on: stop hard.
            tracing::error!(error = %e, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

/// Runs `f` with the calling thread inside the network namespace `ns`; the
/// thread always returns to its original namespace afterwards, also when `f`
/// fails or panics.
pub(crate) fn within<T>(ns: &File, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let orig = current()?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
    let _back = Restore(orig);
    f()
}

/// Makes `dir` a shared mount point (as iproute2 does), so namespace mounts
/// created below it propagate to other mount namespaces (`ip netns exec`).
fn make_shared(dir: &Path) -> Result<()> {
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind mount {}", dir.display()))?;
            mount(None::<&str>, dir, Some("none"), flags, None::<&str>)
                .with_context(|| format!("make {} shared", dir.display()))
        }
        Err(e) => Err(anyhow!("make {} shared: {e}", dir.display())),
    }
}

/// Creates the persistent namespace `run_dir/name` unless it exists.
/// Returns the opened namespace.
pub(crate) fn create(run_dir: &Path, name: &str) -> Result<File> {
    let path = run_dir.join(name);
    if let Some(f) = open(&path)? {
        return Ok(f);
    }
    fs::create_dir_all(run_dir).with_context(|| format!("mkdir {}", run_dir.display()))?;
    make_shared(run_dir)?;
    // The mount point (may be a stale plain file left by an unmount).
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let target: PathBuf = path.clone();
    // A throwaway thread gets the new namespace, pins it by the bind mount
    // and exits; no other thread ever changes namespace for this.
    let made = std::thread::Builder::new()
        .name("weft-netns-add".into())
        .spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(
                Some(THREAD_NETNS),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind mount {THREAD_NETNS} on {}", target.display()))
        })
        .context("spawn netns thread")?
        .join()
        .map_err(|_| anyhow!("netns thread panicked"))
        .and_then(|r| r);
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    match open(&path)? {
        Some(f) => Ok(f),
        None => bail!(
            "{} is not a network namespace after mounting it",
            path.display()
        ),
    }
}

/// Removes the persistent namespace `run_dir/name` (missing is fine). The
/// namespace itself dies with its last user; its links go with it.
pub(crate) fn delete(run_dir: &Path, name: &str) -> Result<()> {
    let path = run_dir.join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => bail!("umount {}: {e}", path.display()),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// Names under `run_dir` starting with `prefix` (sorted; may include stale
/// files, see [`open`]).
pub(crate) fn list(run_dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let rd = match fs::read_dir(run_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", run_dir.display())),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Writes a sysctl of the calling thread's network namespace.
pub(crate) fn write_sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("write {path}"))
}
