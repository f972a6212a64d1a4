//! The pure core: no I/O, no clock but what is passed in. Planning turns a
//! MeshNode spec and the local workloads into the [`state::NodeState`] this
//! node should have; diffing turns observed into desired as a list of
//! [`ops::Op`]; status summarises a pass for the control plane.
//!
//! ```text
//!  MeshNode spec + workloads + public keys ─► plan ─► NodeState (desired)
//!  NodeState (observed, from the data plane) ─┴─► diff ─► [Op]
//!  plan + Observation ─► status ─► MeshNodeStatus
//! ```

pub mod diff;
pub mod ipam;
pub mod observed;
pub mod ops;
pub mod plan;
pub mod state;
pub mod status;
