//! Federation through a hub: members exchange public records of their
//! shared apps, and the hub assigns each shared app one range and each
//! member its blocks of it.
//!
//! ```text
//!  member plan ─► export (records) ─► hub ─► allocate ─► allocations
//!       ▲                                                    │
//!       └── import (other members' records + allocation) ◄───┘
//! ```
//!
//! - [`allocate`]: the hub's pure allocator.
//! - [`import`]: a member's checked view of the other members.
//! - [`member`]: a member's side across passes (read the hub, write records).
//! - [`hub`]: the hub's loop; [`hubdir`]: the directory hub both use; [`hubapi`]:
//!   the hub on a Kubernetes API server.
//! - [`sim`]: members and a hub in memory (tests, benchmarks).
pub mod allocate;
pub mod hub;
pub mod hubapi;
pub mod hubdir;
pub mod import;
pub mod member;
pub mod sim;
