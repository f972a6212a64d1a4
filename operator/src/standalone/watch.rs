//! Which input files changed since the last pass, learnt from inotify, so a
//! pass with nothing new lists, stats and reads nothing.
//!
//! Watched: the manifests directory, the nodes directory and each node's
//! directory. The kernel reports every change of an entry of a watched
//! directory (created, deleted, renamed in or out, written, attributes), by
//! name. Events are drained *before* the files are read, so a change made
//! after the drain is reported to the next pass.
//!
//! When the events cannot be trusted to be complete, the caller scans as it
//! did before inotify (stamps of every file): on the first pass, every
//! [`FULL_SCAN_EVERY`], after a queue overflow, when a directory's watch is
//! lost or the path now names another directory, when an event cannot be
//! read, and always when inotify is unavailable. A node directory whose
//! watch cannot be added (the user's watch limit) is polled by stamp every
//! pass, as are symlinked files (their target changes where no watch sees).
//!
//! Crate: `inotify`, a thin wrapper over the syscalls, rather than
//! `notify`: the operator polls once per pass on its own thread and needs
//! the raw facts (IN_Q_OVERFLOW, IN_IGNORED, which watch a limit refused) to
//! fall back to a scan; `notify` adds a thread, debouncing and portable
//! event kinds that hide them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// A full scan however quiet the events: a safety net for what inotify
/// cannot see (a hard link written through another directory, a symlinked
/// directory retargeted above the watched ones). A scan of 10,000 manifests
/// and 1,000 nodes costs ~150 ms, so once a minute is noise.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(60);

/// Room for a few thousand events per read (the kernel queue holds 16,384
/// by default; a pass drains it in a few reads).
const EVENT_BUFFER: usize = 64 * 1024;

/// What a directory watch reports: every change of an entry's name or
/// content, and the directory itself going away.
fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Which entries of a directory may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dirty {
    /// Unknown: scan every entry (why, for the log).
    All(&'static str),
    /// Only these names (an empty set: nothing changed).
    Names(BTreeSet<OsString>),
}

impl Dirty {
    fn mark(&mut self, name: &std::ffi::OsStr) {
        if let Dirty::Names(n) = self {
            n.insert(name.to_os_string());
        }
    }

    fn all(&mut self, why: &'static str) {
        if !matches!(self, Dirty::All(_)) {
            *self = Dirty::All(why);
        }
    }
}

/// Which of a node's files may have changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeDirty {
    /// node.json.
    pub registration: bool,
    /// status.json.
    pub status: bool,
    /// meshnode.json.
    pub meshnode: bool,
    /// The directory itself (created, removed, replaced): every file.
    pub dir: bool,
}

/// What changed since the last [`Watcher::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Entries of the manifests directory.
    pub manifests: Dirty,
    /// The nodes: `All` scans every node directory; otherwise only the
    /// nodes named here (and those the watcher cannot watch).
    pub nodes: Option<BTreeMap<String, NodeDirty>>,
    /// Why the nodes are scanned whole, when they are.
    pub nodes_all: Option<&'static str>,
}

/// What [`Watcher::watch_node`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Watched already, and the path still names that directory.
    Known,
    /// Watched from now on (new, or the path names another directory).
    New,
    /// Cannot be watched: poll it.
    No,
}

/// A watched directory: the watch and which directory it is.
struct Dir {
    wd: WatchDescriptor,
    id: (u64, u64),
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

/// The node files a pass reads, by name in the node's directory.
pub struct NodeFileNames {
    /// node.json.
    pub registration: OsString,
    /// status.json.
    pub status: OsString,
    /// meshnode.json.
    pub meshnode: OsString,
}

/// The inotify instance and what each watch stands for.
pub struct Watcher {
    inotify: Option<Inotify>,
    buf: Vec<u8>,
    files: NodeFileNames,
    manifests: Option<Dir>,
    nodes: Option<Dir>,
    /// Watch id → node.
    node_of: HashMap<i32, String>,
    /// Node → its directory's watch.
    node_dirs: HashMap<String, Dir>,
    /// Nodes whose directory could not be watched: polled every pass.
    unwatched: BTreeSet<String>,
    last_full: Option<Instant>,
    force_full: bool,
}

impl Watcher {
    /// A watcher; without inotify (not Linux, no instance left) every pass
    /// scans.
    pub fn new(files: NodeFileNames) -> Self {
        let inotify = match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; every pass scans every input file");
                None
            }
        };
        Watcher {
            inotify,
            buf: vec![0; EVENT_BUFFER],
            files,
            manifests: None,
            nodes: None,
            node_of: HashMap::new(),
            node_dirs: HashMap::new(),
            unwatched: BTreeSet::new(),
            last_full: None,
            force_full: false,
        }
    }

    /// Waits until an input changes (an event is queued) or `timeout`
    /// passes, and says whether one did. The events stay queued for the
    /// next [`Watcher::poll`]. Without inotify it just sleeps.
    pub fn wait(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, t) {
            Ok(n) => n > 0,
            // Interrupted: the caller's loop comes back soon enough.
            Err(_) => false,
        }
    }

    /// The next poll reports everything as changed (as after an overflow).
    pub fn force_full_scan(&mut self) {
        self.force_full = true;
    }

    /// Nodes polled by stamp every pass (their directory has no watch).
    pub fn unwatched_nodes(&self) -> &BTreeSet<String> {
        &self.unwatched
    }

    /// What changed since the last poll. Drains the queue first, then makes
    /// sure both top directories are watched (a directory watched anew is
    /// scanned whole: what happened before its watch is unknown).
    pub fn poll(&mut self, manifests: &Path, nodes: &Path) -> Changes {
        let mut m = Dirty::Names(BTreeSet::new());
        let mut n: Option<BTreeMap<String, NodeDirty>> = Some(BTreeMap::new());
        let mut n_all: Option<&'static str> = None;
        if self.inotify.is_none() {
            return Changes {
                manifests: Dirty::All("inotify unavailable"),
                nodes: None,
                nodes_all: Some("inotify unavailable"),
            };
        }
        let due = match self.last_full {
            None => Some("first pass"),
            Some(at) if at.elapsed() >= FULL_SCAN_EVERY => Some("periodic full scan"),
            Some(_) if self.force_full => Some("full scan asked for"),
            Some(_) => None,
        };
        if let Some(why) = due {
            m.all(why);
            n_all = Some(why);
        }
        self.drain(&mut m, &mut n, &mut n_all);
        if !self.check_top(manifests, true) {
            m.all("manifests directory watched anew");
        }
        if !self.check_top(nodes, false) {
            n_all.get_or_insert("nodes directory watched anew");
        }
        if matches!(m, Dirty::All(_)) && n_all.is_some() {
            self.last_full = Some(Instant::now());
            self.force_full = false;
        }
        if n_all.is_some() {
            n = None;
        }
        Changes {
            manifests: m,
            nodes: n,
            nodes_all: n_all,
        }
    }

    /// Whether `path` is the directory its watch is on; if not, watches it
    /// anew (and says false: the caller must scan it).
    fn check_top(&mut self, path: &Path, manifests: bool) -> bool {
        let id = identity(path);
        let slot = if manifests {
            &mut self.manifests
        } else {
            &mut self.nodes
        };
        if id.is_some() && slot.as_ref().map(|d| d.id) == id {
            return true;
        }
        let Some(inotify) = self.inotify.as_mut() else {
            return false;
        };
        if let Some(old) = slot.take() {
            let _ = inotify.watches().remove(old.wd);
        }
        let Some(id) = id else {
            return false;
        };
        match inotify.watches().add(path, dir_mask()) {
            // The watch is on whatever the path names now: check it is the
            // directory just stat'ed, else try again next pass.
            Ok(wd) if identity(path) == Some(id) => *slot = Some(Dir { wd, id }),
            Ok(wd) => {
                let _ = inotify.watches().remove(wd);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot watch; scanning it every pass")
            }
        }
        false
    }

    /// Reads every queued event into `m` and `n`.
    fn drain(
        &mut self,
        m: &mut Dirty,
        n: &mut Option<BTreeMap<String, NodeDirty>>,
        n_all: &mut Option<&'static str>,
    ) {
        let Some(inotify) = self.inotify.as_mut() else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        let gone =
            EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED | EventMask::UNMOUNT;
        let manifests = self
            .manifests
            .as_ref()
            .map(|d| d.wd.get_watch_descriptor_id());
        let nodes = self.nodes.as_ref().map(|d| d.wd.get_watch_descriptor_id());
        let mut lost_nodes: Vec<i32> = Vec::new();
        // A directory moved away stays watched where it went: drop those.
        let mut moved: Vec<WatchDescriptor> = Vec::new();
        loop {
            let events = match inotify.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read inotify events; scanning everything");
                    m.all("inotify read failed");
                    n_all.get_or_insert("inotify read failed");
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::info!("inotify queue overflowed; scanning everything");
                    m.all("inotify queue overflow");
                    n_all.get_or_insert("inotify queue overflow");
                    continue;
                }
                let id = ev.wd.get_watch_descriptor_id();
                let lost = ev.mask.intersects(gone);
                if ev.mask.contains(EventMask::MOVE_SELF) {
                    moved.push(ev.wd.clone());
                }
                if Some(id) == manifests {
                    match ev.name {
                        Some(name) if !lost => m.mark(name),
                        // The directory itself changed (attributes,
                        // moved, removed): scan, and check the watch.
                        _ => {
                            m.all("manifests directory changed");
                            if lost {
                                self.manifests = None;
                            }
                        }
                    }
                } else if Some(id) == nodes {
                    match (ev.name, n.as_mut()) {
                        (Some(name), Some(n)) if !lost => {
                            if let Some(name) = name.to_str() {
                                n.entry(name.to_string()).or_default().dir = true;
                            }
                        }
                        (Some(_), None) if !lost => {}
                        _ => {
                            n_all.get_or_insert("nodes directory changed");
                            if lost {
                                self.nodes = None;
                            }
                        }
                    }
                } else if let Some(node) = self.node_of.get(&id) {
                    let mut d = NodeDirty::default();
                    match ev.name {
                        Some(name) if !lost => {
                            if name == self.files.registration.as_os_str() {
                                d.registration = true;
                            } else if name == self.files.status.as_os_str() {
                                d.status = true;
                            } else if name == self.files.meshnode.as_os_str() {
                                d.meshnode = true;
                            } else {
                                // A temp file, the workloads directory:
                                // nothing the operator reads.
                                continue;
                            }
                        }
                        _ => {
                            d.dir = true;
                            if lost {
                                lost_nodes.push(id);
                            }
                        }
                    }
                    if let Some(n) = n.as_mut() {
                        let e = n.entry(node.clone()).or_default();
                        e.registration |= d.registration;
                        e.status |= d.status;
                        e.meshnode |= d.meshnode;
                        e.dir |= d.dir;
                    }
                }
                // Any other watch is one removed since: nothing to say.
            }
        }
        self.buf = buf;
        for wd in moved {
            let _ = inotify.watches().remove(wd);
        }
        for id in lost_nodes {
            if let Some(node) = self.node_of.remove(&id) {
                if self
                    .node_dirs
                    .get(&node)
                    .is_some_and(|d| d.wd.get_watch_descriptor_id() == id)
                {
                    self.node_dirs.remove(&node);
                }
            }
        }
    }

    /// Makes sure the node's directory at `path` is watched (added, or
    /// watched anew when the path names another directory now). Call before
    /// reading the node's files.
    pub fn watch_node(&mut self, name: &str, path: &Path) -> Watched {
        let Some(inotify) = self.inotify.as_mut() else {
            return Watched::No;
        };
        let id = identity(path);
        if let Some(d) = self.node_dirs.get(name) {
            if id == Some(d.id) {
                return Watched::Known;
            }
        }
        if let Some(old) = self.node_dirs.remove(name) {
            self.node_of.remove(&old.wd.get_watch_descriptor_id());
            let _ = inotify.watches().remove(old.wd);
        }
        let Some(id) = id else {
            self.unwatched.remove(name);
            return Watched::No;
        };
        match inotify.watches().add(path, dir_mask()) {
            // Two names for one directory would share one watch: the
            // second is polled instead.
            Ok(wd)
                if self
                    .node_of
                    .get(&wd.get_watch_descriptor_id())
                    .is_some_and(|other| other != name) =>
            {
                self.unwatched.insert(name.to_string());
                Watched::No
            }
            Ok(wd) if identity(path) == Some(id) => {
                self.node_of
                    .insert(wd.get_watch_descriptor_id(), name.to_string());
                self.node_dirs.insert(name.to_string(), Dir { wd, id });
                self.unwatched.remove(name);
                Watched::New
            }
            Ok(wd) => {
                let _ = inotify.watches().remove(wd);
                self.unwatched.insert(name.to_string());
                Watched::No
            }
            Err(e) => {
                if self.unwatched.insert(name.to_string()) {
                    tracing::warn!(node = %name, error = %e, "cannot watch the node's directory; polling it every pass");
                }
                Watched::No
            }
        }
    }

    /// The node's directory is gone: drop its watch.
    pub fn forget_node(&mut self, name: &str) {
        self.unwatched.remove(name);
        if let Some(old) = self.node_dirs.remove(name) {
            self.node_of.remove(&old.wd.get_watch_descriptor_id());
            if let Some(inotify) = self.inotify.as_mut() {
                let _ = inotify.watches().remove(old.wd);
            }
        }
    }

    /// Whether inotify works here at all.
    pub fn available(&self) -> bool {
        self.inotify.is_some()
    }
}

/// Paths a watcher's caller needs.
pub fn node_file_names(dir: &weft_api::standalone::StateDir) -> NodeFileNames {
    let name = |p: PathBuf| p.file_name().map(OsString::from).unwrap_or_default();
    NodeFileNames {
        registration: name(dir.registration("n")),
        status: name(dir.node_status("n")),
        meshnode: name(dir.meshnode("n")),
    }
}
