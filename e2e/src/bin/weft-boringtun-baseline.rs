//! `weft-boringtun-baseline IFNAME`: a boringtun 0.7 device configured the
//! way Weft's node daemon drove it before it moved to GotaTun (two worker
//! threads per device, unconnected UDP sockets, a single-queue TUN). The
//! benchmark runs two of these, one per namespace, in the same harness as
//! wireguard-go, so the gain of the current data path over the old one is
//! measured in the same run rather than assumed.
//!
//! It serves the standard UAPI socket (`/var/run/wireguard/IFNAME.sock`),
//! so `wg set` configures it like any userspace WireGuard. Bench-only: not
//! shipped in any image.

use std::process::ExitCode;

use boringtun::device::{DeviceConfig, DeviceHandle};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(name), None) = (args.next(), args.next()) else {
        eprintln!("usage: weft-boringtun-baseline IFNAME");
        return ExitCode::from(2);
    };
    let config = DeviceConfig {
        n_threads: 2,
        use_connected_socket: false,
        use_multi_queue: false,
        // Negative: boringtun binds /var/run/wireguard/<name>.sock itself.
        uapi_fd: -1,
    };
    match DeviceHandle::new(&name, config) {
        Ok(mut handle) => {
            handle.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-boringtun-baseline: cannot start {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
