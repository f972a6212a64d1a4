//! `kubectl-weft`: Weft's command line, usable as a kubectl plugin
//! (`kubectl weft ...`, against the cluster of the current kubeconfig
//! context) or on its own against a standalone state directory.

pub mod get;
pub mod graph;
pub mod source;
