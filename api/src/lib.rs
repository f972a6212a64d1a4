//! Weft's Kubernetes API (`weft.dev/v1alpha1`): the custom resource types both
//! binaries share, their condition helpers and well-known names. No I/O here.
//!
//! ```text
//!  user (Git)            operator                     node-daemon
//!  MeshApp/Policy/Site ─► plan ─► MeshNode.spec ─────► data plane
//!        ▲  .status ◄──── aggregate ◄── MeshNode.status ◄──┘
//! ```

// kube-derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#![allow(clippy::duplicated_attributes)]

pub mod attach;
pub mod backoff;
pub mod conditions;
pub mod crd;
pub mod federation;
pub mod labels;
pub mod meshapp;
pub mod meshhub;
pub mod meshnode;
pub mod meshpolicy;
pub mod meshsite;
pub mod policy;
pub mod selector;
pub mod standalone;
pub mod validation;

pub use meshapp::{EnforcedApp, MeshApp, MeshAppSpec, MeshAppStatus};
pub use meshhub::{MeshHub, MeshHubSpec, MeshHubStatus};
pub use meshnode::{
    AppAttachment, AppLink, AppSelector, AppStatus, DataplaneKind, MeshNode, MeshNodeSpec,
    MeshNodeStatus, PeerSpec, PeerStatus, PreparedKey, WorkloadStatus,
};
pub use meshpolicy::{EnforcedPolicy, MeshPolicy, MeshPolicySpec, MeshPolicyStatus};
pub use meshsite::{EnforcedSite, HubAccess, MeshSite, MeshSiteSpec, MeshSiteStatus, SiteKind};
pub use policy::{CompiledPolicy, CompiledRule, PolicyDirection, PolicyProtocol};
pub use selector::Selector;

/// API group of every Weft resource.
pub const GROUP: &str = "weft.dev";
/// API version served today.
pub const VERSION: &str = "v1alpha1";
