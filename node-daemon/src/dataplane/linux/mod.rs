//! Real Linux data plane (netlink, WireGuard, namespaces).
