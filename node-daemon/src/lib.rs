//! Weft node daemon: makes one node's kernel match its MeshNode.
//!
//! The folders follow the way data moves through the daemon:
//!
//! ```text
//!  desired/  (file, kube)  ── MeshNode spec ──┐
//!  workloads/ (dir, attach, pods, docker) ────┼─► run/ ─► core/ plan ─► NodeState ─► core/ diff ─► [Op] ─► dataplane/
//!  keys (the node's private keys) ────────────┘   loop     (pure)                       (pure)         (netlink, WireGuard, nft)
//!                                                   │                                                        │
//!  desired/ ◄── MeshNode status ◄── core/ status ◄──┴──────────────── Observation ◄──────────────────────────┘
//! ```
//!
//! | folder / module | owns |
//! |---|---|
//! | [`desired`] | sources of desired state: the state directory or the API server ([`desired::Transport`]) |
//! | [`workloads`] | sources of workloads: announcements, the CNI attach socket, this node's pods, Docker ([`workloads::WorkloadSource`]) |
//! | [`core`] | the pure core: plan, diff, status, workload addresses |
//! | [`dataplane`] | every side effect on the kernel, behind [`dataplane::Dataplane`] |
//! | [`dns`] | the per-app resolvers the data plane runs |
//! | [`run`] | the one loop that joins them, the modes that pick its parts, its metrics |
//! | [`keys`], [`storage`], [`wake`], [`kubeapi`], [`cni_install`] | private keys, file helpers, loop wake-ups, the API client, the CNI chain |
//!
//! Imports only go down this list's flow: `core` imports no other folder,
//! `dataplane` only `core`, sources never import `run`
//! (`tests/layout.rs` checks it).

pub mod cni_install;
pub mod core;
pub mod dataplane;
pub mod desired;
pub mod dns;
pub mod error;
pub mod keys;
pub mod kubeapi;
pub mod run;
pub mod storage;
pub mod wake;
pub mod workloads;

pub use error::Error;
