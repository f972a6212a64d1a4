//! The watcher thread: keeps an [`Inventory`] in step with the engine.
//!
//! Each session opens the event stream first, then lists and inspects the
//! labelled containers (catch-up), then applies events as they come; events
//! that raced the listing are applied after it (inspecting is idempotent),
//! so nothing that starts in between is missed. When the stream breaks or
//! the engine cannot be reached, the error is recorded and a new session
//! starts after a backoff (0.5 s doubling to 10 s).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::{self, Container};
use super::http::{self, LineStream};
use super::inventory::{Engine, Inventory, NetnsId};

/// How long one blocking read waits before checking the stop flag.
const TICK: Duration = Duration::from_millis(250);
/// Timeout of one-shot requests (list, inspect).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The identity of the netns at `path`, if it exists.
pub fn netns_id(path: &str) -> Option<NetnsId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Inspects one container: `Ok(None)` when the engine no longer knows it.
fn inspect(socket: &Path, id: &str) -> Result<Option<(Container, Option<NetnsId>)>, String> {
    let (status, body) = http::get(socket, &api::inspect_path(id), REQUEST_TIMEOUT)?;
    match status {
        200 => {}
        404 => return Ok(None),
        s => {
            return Err(format!(
                "{}: inspect container {}: HTTP {s}: {}",
                socket.display(),
                api::short(id),
                api::excerpt(&body)
            ))
        }
    }
    let c = api::parse_inspect(&body)?;
    let id = (c.running && c.pid != 0)
        .then(|| netns_id(&api::netns_path(c.pid)))
        .flatten();
    Ok(Some((c, id)))
}

/// Lists and inspects every running labelled container.
fn catch_up(socket: &Path, stop: &AtomicBool) -> Result<Vec<(Container, Option<NetnsId>)>, String> {
    let (status, body) = http::get(socket, &api::list_path(), REQUEST_TIMEOUT)?;
    if status != 200 {
        return Err(format!(
            "{}: list containers: HTTP {status}: {}",
            socket.display(),
            api::excerpt(&body)
        ));
    }
    let mut out = Vec::new();
    for id in api::parse_list(&body)? {
        // Shutting down: each inspect may wait out its timeout.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(c) = inspect(socket, &id)? {
            out.push(c);
        }
    }
    Ok(out)
}

fn lock(inv: &Mutex<Inventory>) -> std::sync::MutexGuard<'_, Inventory> {
    // The inventory stays consistent between calls; a panicking holder
    // cannot leave it half-updated in a way a resync would not repair.
    inv.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection: catch up, then follow events until the stream breaks or
/// `stop` is set; every change of the inventory sets `wake`.
fn session(
    socket: &Path,
    inv: &Mutex<Inventory>,
    stop: &AtomicBool,
    wake: &crate::wake::Wake,
) -> Result<(), String> {
    let mut events = LineStream::open(socket, &api::events_path(), TICK)?;
    let mut early = Vec::new();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while !events.ready() {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: no answer to GET /events", socket.display()));
        }
        early.extend(events.poll()?);
    }
    let listed = catch_up(socket, stop)?;
    let n = listed.len();
    {
        let mut g = lock(inv);
        let was = g.engine().clone();
        g.resync(listed);
        wake.set();
        if was != Engine::Watching {
            tracing::info!(socket = %socket.display(), containers = n, "watching the Docker engine");
        }
    }
    let mut lines = early;
    loop {
        for l in lines.drain(..) {
            match api::parse_event(&l) {
                Ok(None) => {}
                Ok(Some(change)) => {
                    // Inspect outside the lock: a pass must not wait on the engine.
                    let looked_up = match &change {
                        api::Change::Refresh(id) => Some(inspect(socket, id)),
                        api::Change::Gone(_) => None,
                    };
                    lock(inv).apply(&change, |_| looked_up.unwrap_or(Ok(None)))?;
                    // A container came, changed or went: attach or detach
                    // it now, not at the next timed pass.
                    wake.set();
                }
                Err(e) => tracing::warn!(error = %e, "unreadable Docker event; ignored"),
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        lines = events.poll()?;
    }
}

/// Runs sessions until `stop` is set.
pub fn watch(
    socket: PathBuf,
    inv: Arc<Mutex<Inventory>>,
    stop: Arc<AtomicBool>,
    wake: crate::wake::Wake,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = session(&socket, &inv, &stop, &wake);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let why = match result {
            Ok(()) => continue,
            Err(e) => e,
        };
        // A session that ran for a while was healthy: retry quickly.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        let was_watching = lock(&inv).engine() == &Engine::Watching;
        if was_watching || last_error.as_ref() != Some(&why) {
            tracing::warn!(error = %why, retry_in = ?backoff, "Docker engine unreachable; containers keep their attachments, retrying");
            last_error = Some(why.clone());
        }
        lock(&inv).set_unreachable(why);
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
