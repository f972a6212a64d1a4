//! The watcher: keeps an [`Inventory`] in step with the engine, on a thread
//! of its own with a current-thread tokio runtime (bollard is async; the
//! daemon's reconcile loop must not wait on the engine).
//!
//! Each session connects, lists and inspects the labelled containers
//! (catch-up), then follows the event stream, asking the engine to replay
//! from one second before the listing began (`since`): whatever started or
//! stopped between the listing and the subscription comes as an event, and
//! events the listing already saw are harmless (each one inspects the
//! container as it is now). When the stream ends or the engine cannot be
//! reached, the error is recorded and a new session starts after a backoff
//! (0.5 s doubling to 10 s).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as DockerError;
use bollard::Docker;
use futures::StreamExt;

use super::api::{self, Container};
use super::inventory::{Engine, Inventory, NetnsId};

/// Timeout (seconds) of one request until the engine's answer begins.
const REQUEST_TIMEOUT_SECONDS: u64 = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How far before the listing the event replay starts.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);

/// The identity of the netns at `path`, if it exists.
pub fn netns_id(path: &str) -> Option<NetnsId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Connects to the engine at `socket` and settles the API version. bollard
/// 0.21 sends unversioned paths (the engine answers in its own version,
/// 1.41 on Docker 20.10, so old and current engines both work);
/// `negotiate_version` reads `/version` and downgrades the client to an
/// older engine's version. Should a later bollard put a version newer
/// than the engine's in its paths, the unit tests' scripted engine (which
/// refuses those, as Docker 20.10 does) fails.
async fn connect(socket: &Path) -> Result<Docker, String> {
    let what = |e: DockerError| format!("{}: {}", socket.display(), api::describe(&e));
    let path = socket.to_string_lossy();
    let docker =
        Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
            .map_err(what)?;
    docker.negotiate_version().await.map_err(what)
}

/// Inspects one container: `Ok(None)` when the engine no longer knows it.
async fn inspect(
    docker: &Docker,
    socket: &Path,
    id: &str,
) -> Result<Option<(Container, Option<NetnsId>)>, String> {
    let c = match docker.inspect_container(id, None).await {
        Ok(i) => api::container(i),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{}: inspect container {}: {}",
                socket.display(),
                api::short(id),
                api::describe(&e)
            ))
        }
    };
    let netns = (c.running && c.pid != 0)
        .then(|| netns_id(&api::netns_path(c.pid)))
        .flatten();
    Ok(Some((c, netns)))
}

/// Lists and inspects every running labelled container.
async fn catch_up(
    docker: &Docker,
    socket: &Path,
) -> Result<Vec<(Container, Option<NetnsId>)>, String> {
    let listed = docker
        .list_containers(Some(api::list_options()))
        .await
        .map_err(|e| {
            format!(
                "{}: list containers: {}",
                socket.display(),
                api::describe(&e)
            )
        })?;
    let mut out = Vec::new();
    for id in listed.into_iter().filter_map(|c| c.id) {
        if let Some(c) = inspect(docker, socket, &id).await? {
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

/// Unix seconds, one margin before now.
fn replay_from() -> u64 {
    SystemTime::now()
        .checked_sub(REPLAY_MARGIN)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// One connection: catch up, then follow events until the stream breaks;
/// every change of the inventory sets `wake`. Always ends in an error.
async fn session(socket: &Path, inv: &Mutex<Inventory>, wake: &crate::wake::Wake) -> String {
    let docker = match connect(socket).await {
        Ok(d) => d,
        Err(e) => return e,
    };
    let since = replay_from();
    let listed = match catch_up(&docker, socket).await {
        Ok(l) => l,
        Err(e) => return e,
    };
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
    let mut events = docker.events(Some(api::events_options(since)));
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => return format!("{}: event stream: {}", socket.display(), api::describe(&e)),
        };
        match api::change(&event) {
            Ok(None) => {}
            Ok(Some(change)) => {
                // Inspect outside the lock: a pass must not wait on the engine.
                let looked_up = match &change {
                    api::Change::Refresh(id) => Some(inspect(&docker, socket, id).await),
                    api::Change::Gone(_) => None,
                };
                if let Err(e) = lock(inv).apply(&change, |_| looked_up.unwrap_or(Ok(None))) {
                    return e;
                }
                // A container came, changed or went: attach or detach it
                // now, not at the next timed pass.
                wake.set();
            }
            Err(e) => tracing::warn!(error = %e, "unreadable Docker event; ignored"),
        }
    }
    format!("{}: the engine ended the event stream", socket.display())
}

/// Runs sessions for ever (the caller drops the future to stop).
pub async fn watch(socket: &Path, inv: &Mutex<Inventory>, wake: crate::wake::Wake) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error: Option<String> = None;
    loop {
        let started = Instant::now();
        let why = session(socket, inv, &wake).await;
        // A session that ran for a while was healthy: retry quickly.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        let was_watching = lock(inv).engine() == &Engine::Watching;
        if was_watching || last_error.as_ref() != Some(&why) {
            tracing::warn!(error = %why, retry_in = ?backoff, "Docker engine unreachable; containers keep their attachments, retrying");
            last_error = Some(why.clone());
        }
        lock(inv).set_unreachable(why);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
