//! The control side of a userspace device, shared by the device itself
//! ([`super::userspace`]) and the `wg` socket in front of it
//! ([`super::wgsock`]): its own module so neither imports the other.

use std::sync::{Mutex, MutexGuard};

use anyhow::Result;

use super::uapi::{Uapi, UapiDevice};
use crate::keys::PrivateKey;

/// The control side of a device: our end of its UAPI socketpair and the
/// private key last given to it. Behind one mutex, shared with the device's
/// `wg` socket, so requests stay strictly one at a time and a `wg show`
/// never sees a half-applied change (a peer between removal and re-adding).
#[derive(Debug)]
pub(crate) struct Control {
    pub uapi: Uapi,
    /// boringtun's `get` reports only the public key; `wg` needs the private
    /// one to show the interface's public key.
    key: Option<PrivateKey>,
}

impl Control {
    pub(crate) fn new(uapi: Uapi) -> Self {
        Control { uapi, key: None }
    }

    /// `set=1` with the given lines.
    pub(crate) fn set(&mut self, lines: &[String]) -> Result<()> {
        self.uapi.set(lines)
    }

    /// `get=1`, parsed.
    pub(crate) fn get(&mut self) -> Result<UapiDevice> {
        self.uapi.get()
    }

    /// Sets the private key and, when given, the listen port.
    pub(crate) fn configure(&mut self, key: &PrivateKey, port: Option<u16>) -> Result<()> {
        let mut lines = vec![format!("private_key={}", key.to_hex())];
        if let Some(port) = port {
            lines.push(format!("listen_port={port}"));
        }
        self.uapi.set(&lines)?;
        self.key = Some(key.clone());
        Ok(())
    }

    /// The private key last set, if any.
    pub(crate) fn key(&self) -> Option<&PrivateKey> {
        self.key.as_ref()
    }
}

/// Locks a device's control side; a panic elsewhere while holding it leaves
/// the stream usable (every exchange is self-contained).
pub(crate) fn lock(control: &Mutex<Control>) -> MutexGuard<'_, Control> {
    control.lock().unwrap_or_else(|p| p.into_inner())
}
