//! Label, annotation and finalizer names shared by the operator and the daemon.

/// Label on a workload (pod, container, standalone workload) naming its MeshApp.
pub const APP_LABEL: &str = "weft.dev/app";
/// Label on a Node / MeshNode naming the MeshSite it belongs to.
pub const SITE_LABEL: &str = "weft.dev/site";
/// Finalizer the operator puts on MeshApps so data planes are removed first.
pub const APP_FINALIZER: &str = "weft.dev/cleanup";
/// Server-side-apply field manager of the operator.
pub const OPERATOR_MANAGER: &str = "weft-operator";
/// Server-side-apply field manager of the node daemon.
pub const DAEMON_MANAGER: &str = "weft-node-daemon";
/// Site name used when an object names none: the cluster the operator runs in.
pub const LOCAL_SITE: &str = "local";
