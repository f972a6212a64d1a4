//! The attach socket's server on its own thread, for the modes that serve
//! a CNI runtime (standalone with `--attach-socket`, Kubernetes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::workloads::attach::{AttachServer, Shared};

/// How long an ADD waits for the pass that attaches its workload (the
/// plugin gives up a little later).
pub const ATTACH_WAIT: Duration = Duration::from_secs(25);

/// The attach socket's server thread and the registry it shares with the
/// loop (both modes).
pub struct AttachService {
    /// Registry and outcomes shared with [`RuntimeSource`].
    pub shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

impl AttachService {
    /// Binds `socket` (the registry persists under `data_dir`, so a restart
    /// re-attaches what the runtime added before) and serves it until `stop`;
    /// a change of what is registered sets `wake`.
    pub fn start(
        socket: &std::path::Path,
        data_dir: &std::path::Path,
        stop: &Arc<AtomicBool>,
        wake: &crate::wake::Wake,
    ) -> Result<Self, Error> {
        let shared = Arc::new(
            Shared::persistent(data_dir.join("attach-registry.json"))?.waking(wake.clone()),
        );
        let server = AttachServer::bind(socket, shared.clone(), ATTACH_WAIT)
            .map_err(|e| Error::io(socket, e))?;
        tracing::info!(socket = %socket.display(), "attach socket listening");
        let server_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || server.serve(server_stop))
            .map_err(|e| Error::io(socket, e))?;
        Ok(AttachService { shared, thread })
    }

    /// Sets `stop` and waits for the server thread.
    pub fn stop(self, stop: &AtomicBool) {
        stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
