//! The daemon's side of the attach protocol (`weft_api::attach`): the CNI
//! plugin asks over a unix socket; the run loop does the work on its next pass
//! and publishes the outcome here; the server answers from that.
//!
//! ```text
//! weft-cni ─ Add ─► server ─ registry (key -> netns) ─► run loop: plan/diff/apply
//!          ◄─ Attached ─ server ◄─ published outcome ◄───────┘
//! ```
//! The server never touches the data plane itself, so attachment stays in the
//! one reconcile path (and a daemon restart re-attaches from the registry).

pub mod publish;
pub mod registry;
pub mod server;

pub use registry::{Outcome, Shared};
pub use server::AttachServer;
