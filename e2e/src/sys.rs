//! The only place in this crate that needs `unsafe`: installing a signal
//! handler for SIGINT/SIGTERM that just raises a flag. Long waits in the
//! harness poll the flag (see [`crate::check_interrupt`]) and unwind, so the
//! Drop guards remove every namespace and process the run created.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the flag-raising handler for SIGINT and SIGTERM.
pub fn install_interrupt_handler() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: `on_signal` only performs a store to a static atomic, which is
        // async-signal-safe; it neither allocates, locks nor touches errno.
        // Handlers are reset to the default in exec'd children, so child
        // processes are unaffected.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM was received since the handler was installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
