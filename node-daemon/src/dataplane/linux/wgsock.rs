//! `wg show` for userspace devices.
//!
//! GotaTun devices are configured through their Rust API (see
//! [`super::userspace`]), but the stock `wg` tool finds userspace devices
//! only as `<name>.sock` in `/var/run/wireguard` (compiled into
//! wireguard-tools; no environment variable moves it). So for every
//! userspace device the daemon serves a socket there of its own:
//!
//! - Name: `wf<appId>.sock` for the app netns `weft-<node>-<appId>`
//!   ([`socket_name`]). The app id is unique on a node, and so is the name,
//!   even where two apps' interfaces inside their namespaces share a name;
//!   12 characters fit `wg`'s IFNAMSIZ-1 (it cuts longer names in its
//!   output). It is also the interface name the operator gives the app
//!   (`wf<appId>`), so `wg show wf<appId>` and
//!   `ip -n weft-<node>-<appId> link show wf<appId>` name the same device.
//!   An app has the same id on every node, so daemons sharing one host
//!   (simulated nodes) need a directory each (`--wg-socket-dir`).
//! - Read-only: `get=1` is answered, `set=1` refused with EPERM ("Operation
//!   not permitted"). The reconciler owns the device: a `wg set` would be
//!   undone on its next pass, or be mistaken for drift it repairs. Change
//!   the MeshApp (or the MeshNode spec) instead.
//! - Content: the device's own UAPI `get` answer, as the reference
//!   implementations write it (`private_key=`, handshake times as Unix
//!   times). So `wg show` prints the private key as "(hidden)", but
//!   `wg showconf` and `wg show <name> private-key` print it: acceptable,
//!   because the socket is 0600 root and root on the host can read the key
//!   file in the daemon's data directory anyway. Nothing here logs a
//!   request or an answer.
//! - Lifetime: bound when the device starts, removed when it stops (an
//!   app deleted, a device replaced, the daemon shutting down). A socket
//!   nobody listens on (a crashed daemon) is replaced; one that answers
//!   belongs to another live process and is left alone. [`remove_stale`]
//!   clears dead ones at start-up and in `cleanup`.
//!
//! Kernel devices get no socket: the kernel serves `wg` over netlink in the
//! netns the interface is in, so `ip netns exec weft-<node>-<appId> wg show`
//! reads them.
//!
//! One thread ([`WgServer`]) serves every device's socket, one client at a
//! time, each with short timeouts: only root can connect, and `wg` asks
//! once per connection. (A thread per socket was 200 threads, and 200
//! wake-ups a second, for 200 apps on a node.)

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sha2::{Digest, Sha256};

/// Where `wg` looks for userspace devices.
pub const DEFAULT_DIR: &str = "/var/run/wireguard";
/// What every socket name starts with (the operator's interface prefix).
const PREFIX: &str = "wf";
const SUFFIX: &str = ".sock";
/// Characters of an app id (the end of `weft-<node>-<appId>`).
const ID_LEN: usize = 10;
/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// A request larger than this is not read to its end (a `get` is one line;
/// only a refused `set` can be long).
const MAX_REQUEST: u64 = 1 << 20;
/// How long the server waits in `poll` before it looks at its stop flag
/// and its list of sockets again, should a wake-up be missed.
const POLL_TICK_MS: u16 = 1000;
const EPERM: i32 = 1;
const EIO: i32 = 5;
const EINVAL: i32 = 22;

/// The socket name (without `.sock`) for the device of app netns `netns`:
/// `wf<appId>` for `weft-<node>-<appId>`; for a netns not named that way
/// (never one the daemon plans) `wf` and 10 hex digits of its name's hash.
pub fn socket_name(netns: &str) -> String {
    let id = netns
        .rsplit_once('-')
        .map(|(_, id)| id)
        .filter(|id| id.len() == ID_LEN && id.bytes().all(is_id_char));
    match id {
        Some(id) => format!("{PREFIX}{id}"),
        None => {
            let h = Sha256::digest(netns.as_bytes());
            format!("{PREFIX}{}", &crate::keys::hex(&h[..ID_LEN / 2]))
        }
    }
}

/// Characters of app ids (base32) and of the hashed fallback (hex).
fn is_id_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `file` is a socket name [`socket_name`] can produce.
fn is_ours(file: &str) -> bool {
    file.strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
        .is_some_and(|id| id.len() == ID_LEN && id.bytes().all(is_id_char))
}

/// What is at a socket path.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    Nothing,
    /// A socket (or other file) nobody answers on.
    Dead,
    /// A process accepts connections on it.
    Live,
}

fn holder(path: &Path) -> Holder {
    match UnixStream::connect(path) {
        Ok(_) => Holder::Live,
        Err(e) if e.kind() == ErrorKind::NotFound => Holder::Nothing,
        Err(_) => Holder::Dead,
    }
}

/// Removes sockets of ours in `dir` that nobody answers on (a crashed
/// daemon's), and temporary files of binds that never finished. Live
/// sockets, possibly another daemon's on a shared host, stay.
pub fn remove_stale(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if is_ours(&name) {
            holder(&e.path()) == Holder::Dead
        } else if let Some(pid) = tmp_owner(&name) {
            !Path::new(&format!("/proc/{pid}")).exists()
        } else {
            false
        };
        if stale && fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The temporary name a socket is bound under before it is renamed into
/// place (so `wg` never finds it half set up). `wg` lists only `*.sock`.
fn tmp_name(name: &str) -> String {
    format!(".{name}{SUFFIX}.{}.tmp", std::process::id())
}

/// The pid in a [`tmp_name`] of ours.
fn tmp_owner(file: &str) -> Option<u32> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (sock, pid) = rest.rsplit_once('.')?;
    is_ours(sock).then_some(())?;
    pid.parse().ok()
}

/// The thread that serves every device's socket, and the sockets it serves.
pub(crate) struct WgServer {
    shared: Arc<Served>,
    thread: Option<JoinHandle<()>>,
}

/// What a socket serves: the device's answer to `get=1`, in the UAPI text
/// form up to and including its `errno=` line.
pub(crate) type Getter = Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// One served socket: its listener and its device's getter.
type Entry = (Arc<UnixListener>, Getter);

struct Served {
    /// Socket key -> what it serves.
    sockets: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
    stop: AtomicBool,
    /// Written to make the thread take a new list of sockets at once.
    wake_tx: UnixDatagram,
    wake_rx: UnixDatagram,
}

impl Served {
    fn wake(&self) {
        let _ = self.wake_tx.send(&[1]);
    }
}

impl std::fmt::Debug for WgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgServer").finish_non_exhaustive()
    }
}

impl WgServer {
    /// Starts the serving thread (with nothing to serve yet).
    pub(crate) fn start() -> Result<WgServer> {
        let (wake_tx, wake_rx) = UnixDatagram::pair().context("wake-up socket pair")?;
        wake_tx.set_nonblocking(true).context("non-blocking")?;
        wake_rx.set_nonblocking(true).context("non-blocking")?;
        let shared = Arc::new(Served {
            sockets: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wg-sockets".into())
                .spawn(move || serve(&shared))
                .context("spawn the `wg` socket thread")?
        };
        Ok(WgServer {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for WgServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A device's socket for `wg` (served by a [`WgServer`]).
pub(crate) struct WgSocket {
    path: PathBuf,
    /// Device and inode of the socket we bound, so we never remove a file
    /// that replaced it.
    id: (u64, u64),
    /// Its key in the server's list.
    key: u64,
    server: Arc<Served>,
    /// Set once stopped: a later call must not remove a new socket that
    /// happens to get the same inode.
    stopped: bool,
}

impl std::fmt::Debug for WgSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl WgSocket {
    /// Binds `<dir>/<name>.sock` (0600) and has `server` serve `get`
    /// on it. `Ok(None)` when a live process already serves that name.
    pub(crate) fn start(
        server: &WgServer,
        dir: &Path,
        name: &str,
        get: Getter,
    ) -> Result<Option<WgSocket>> {
        if !dir.is_dir() {
            // The mode wireguard-go gives it: listing is harmless, the
            // sockets themselves are 0600.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
        let path = dir.join(format!("{name}{SUFFIX}"));
        if holder(&path) == Holder::Live {
            tracing::warn!(socket = %path.display(), "another process serves this WireGuard socket; not replacing it");
            return Ok(None);
        }
        let tmp = dir.join(tmp_name(name));
        let _ = fs::remove_file(&tmp);
        let listener =
            UnixListener::bind(&tmp).with_context(|| format!("bind {}", tmp.display()))?;
        let placed = (|| -> Result<(u64, u64)> {
            // The server polls; an accept must never block it.
            listener.set_nonblocking(true).context("non-blocking")?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).context("chmod 0600")?;
            // Replaces a dead socket of the same name in one step.
            fs::rename(&tmp, &path).context("rename into place")?;
            let md = fs::symlink_metadata(&path).context("stat")?;
            Ok((md.dev(), md.ino()))
        })();
        let id = match placed {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.context(format!("place {}", path.display())));
            }
        };
        let shared = server.shared.clone();
        let key = shared.next.fetch_add(1, Ordering::Relaxed);
        shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Arc::new(listener), get));
        shared.wake();
        tracing::info!(socket = %path.display(), "serving the device to `wg` (read-only)");
        Ok(Some(WgSocket {
            path,
            id,
            key,
            server: shared,
            stopped: false,
        }))
    }

    /// Stops serving and removes the socket file (if it is still ours).
    pub(crate) fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.server
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.server.wake();
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|md| md.file_type().is_socket() && (md.dev(), md.ino()) == self.id);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove WireGuard socket");
            }
        }
    }
}

impl Drop for WgSocket {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server thread: waits on every listener (and its wake-up socket) at
/// once, answers whoever connected, and takes the list again.
fn serve(shared: &Served) {
    while !shared.stop.load(Ordering::Relaxed) {
        let list: Vec<Entry> = shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut fds: Vec<PollFd<'_>> = list
            .iter()
            .map(|(l, _)| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(shared.wake_rx.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, PollTimeout::from(POLL_TICK_MS)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "poll on the `wg` sockets failed");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut buf = [0u8; 64];
        while shared.wake_rx.recv(&mut buf).is_ok() {}
        for ((listener, get), _) in list.iter().zip(&ready).filter(|(_, r)| **r) {
            match listener.accept() {
                Ok((conn, _)) => {
                    if let Err(e) = conn.set_nonblocking(false).and_then(|()| answer(conn, get)) {
                        tracing::debug!(error = %e, "`wg` client went away");
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => tracing::warn!(error = %e, "WireGuard socket accept failed"),
            }
        }
    }
}

/// Reads one request and answers it.
fn answer(conn: UnixStream, get: &Getter) -> std::io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST));
    let mut op = Vec::new();
    if reader.read_until(b'\n', &mut op)? == 0 {
        return Ok(()); // `wg` probing whether the device exists
    }
    // Read the rest up to its blank line, so a client still writing (a
    // long `set`) is not cut off and reads our answer instead.
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line == b"\n" {
            break;
        }
    }
    // wireguard-tools reads a `set` answer's errno negated (wireguard-go
    // writes `-EPERM`), but a `get` answer's only unsigned (see `get`).
    let response = match op.as_slice() {
        b"get=1\n" => answer_get(get),
        b"set=1\n" => format!("errno=-{EPERM}\n\n"),
        _ => format!("errno=-{EINVAL}\n\n"),
    };
    (&conn).write_all(response.as_bytes())
}

fn answer_get(get: &Getter) -> String {
    match get() {
        // The blank line ends the answer.
        Ok(text) => format!("{}\n\n", text.trim_end()),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "userspace WireGuard device did not answer a `wg` request");
            // Unsigned: `wg` reads a negative number here as garbage.
            format!("errno={EIO}\n\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_come_from_the_app_id() {
        assert_eq!(socket_name("weft-n1-abcdefgh23"), "wfabcdefgh23");
        assert_eq!(socket_name("weft-my-node-7-abcdefgh23"), "wfabcdefgh23");
        // Same app on two nodes: same name (one daemon per host, or one
        // directory per daemon); two apps on one node: different names.
        assert_eq!(
            socket_name("weft-n1-abcdefgh23"),
            socket_name("weft-n2-abcdefgh23")
        );
        assert_ne!(
            socket_name("weft-n1-abcdefgh23"),
            socket_name("weft-n1-abcdefgh24")
        );
        for odd in ["x", "weft-n1-SHORT", "weft-n1-abcdefgh2_", ""] {
            let n = socket_name(odd);
            assert!(n.len() == 12 && n.starts_with("wf"), "{odd:?} -> {n:?}");
            assert!(is_ours(&format!("{n}.sock")), "{n}");
        }
        assert_ne!(socket_name("a"), socket_name("b"));
        assert!(is_ours("wfabcdefgh23.sock"));
        for not in [
            "wg0.sock",
            "wfabcdefgh23",
            "wfabcdefgh2.sock",
            "xwfabcdefgh23.sock",
        ] {
            assert!(!is_ours(not), "{not}");
        }
        assert_eq!(
            tmp_owner(&tmp_name("wfabcdefgh23")),
            Some(std::process::id())
        );
        assert_eq!(tmp_owner(".wg0.sock.12.tmp"), None);
    }

    #[test]
    fn stale_sockets_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("wfaaaaaaaaaa.sock");
        let _live = UnixListener::bind(&live_path).unwrap();
        let dead_path = dir.path().join("wfbbbbbbbbbb.sock");
        drop(UnixListener::bind(&dead_path).unwrap());
        let foreign = dir.path().join("wg0.sock");
        drop(UnixListener::bind(&foreign).unwrap());
        // A bind of a process that no longer exists (pid beyond pid_max).
        let tmp = dir.path().join(".wfcccccccccc.sock.99999999.tmp");
        fs::write(&tmp, b"").unwrap();
        let mut removed = remove_stale(dir.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![".wfcccccccccc.sock.99999999.tmp", "wfbbbbbbbbbb.sock"]
        );
        assert!(live_path.exists() && foreign.exists());
        assert_eq!(
            remove_stale(&dir.path().join("absent")).unwrap(),
            Vec::<String>::new()
        );
    }

    /// One request over a fresh connection, as `wg` makes it.
    fn ask(path: &Path, request: &str) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        BufReader::new(&c).read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_get_refuses_set_and_removes_its_socket() {
        // A device that answers `get` and counts how often it was asked.
        let gets = Arc::new(AtomicU64::new(0));
        let asked = gets.clone();
        let control: Getter = Arc::new(move || {
            asked.fetch_add(1, Ordering::Relaxed);
            Ok("listen_port=7\nerrno=0\n".to_string())
        });
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("wireguard");
        // A dead socket of the same name (a crashed daemon's) is replaced.
        fs::create_dir(&sockets).unwrap();
        let path = sockets.join("wfabcdefgh23.sock");
        drop(UnixListener::bind(&path).unwrap());
        let server = WgServer::start().unwrap();
        let mut s = WgSocket::start(&server, &sockets, "wfabcdefgh23", control.clone())
            .unwrap()
            .expect("a dead socket does not block the name");
        let md = fs::metadata(&path).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.mode() & 0o777, 0o600);

        assert_eq!(ask(&path, "get=1\n\n"), "listen_port=7\nerrno=0\n\n");
        assert_eq!(
            ask(&path, "set=1\nlisten_port=9\nreplace_peers=true\n\n"),
            "errno=-1\n\n"
        );
        assert_eq!(ask(&path, "bogus=1\n\n"), "errno=-22\n\n");
        // `wg` checking that the device exists: connect, close.
        drop(UnixStream::connect(&path).unwrap());
        // A second server for the same name stands back while this one lives.
        assert!(
            WgSocket::start(&server, &sockets, "wfabcdefgh23", control.clone())
                .unwrap()
                .is_none()
        );

        let started = std::time::Instant::now();
        s.stop();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&sockets).unwrap().count(), 0);
        // Only the one `get` reached the device: `set` never did.
        assert_eq!(gets.load(Ordering::Relaxed), 1);
    }
}
