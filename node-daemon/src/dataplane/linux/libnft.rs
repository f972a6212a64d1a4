//! libnftables in process: the library the `nft` tool is built on, so a
//! ruleset is applied by a library call in the calling thread's netns, as
//! one kernel transaction, exactly as `nft -j -f -` would apply it.
//!
//! Why: starting `nft` costs a fork, an exec, the loading of its libraries
//! and a cache of the netns' ruleset, 20-40 ms on a busy node; programming
//! 200 apps cold started 200 of them and spent a third of its CPU there.
//!
//! Loaded at run time (`dlopen("libnftables.so.1")`) rather than linked:
//! the daemon still starts, and builds, on a host without nftables (no
//! policy and no packet counters there, as before), and when the library
//! is missing [`super::nft`] falls back to the `nft` executable. There is
//! no maintained Rust binding of libnftables; its API is six C functions.
//!
//! Calls are serialised: libnftables keeps some state per process.
//!
//! Each call runs on a thread of its own with a file table of its own
//! (`unshare(CLONE_FILES)`, then every inherited fd closed): libnftables
//! waits on its netlink socket with `select()`, which aborts the process
//! (glibc's fortify check) once that socket's fd is 1024 or more, and a
//! node with a hundred apps holds over a thousand fds (netlink, UDP, TUN,
//! DNS sockets per app). In the thread's own table the socket is always
//! among the first few fds. The thread enters the caller's netns through
//! `/proc/self/task/<tid>/ns/net` (a path, since it cannot see the caller's
//! fds) and ends with the call, so nothing keeps the netns alive after
//! it. (A long-lived worker that went back to its own netns after each call
//! was tried first; in the daemon it stayed in an app netns, which kept a
//! deleted app's links alive.) A thread per call costs about 0.1 ms; calls
//! are per ruleset change, not per pass.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// `NFT_CTX_DEFAULT`.
const CTX_DEFAULT: c_uint = 0;
/// `NFT_CTX_OUTPUT_JSON`: also makes the input parsed as JSON.
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The library's entry points.
struct Lib {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    output_set_flags: SetFlags,
    buffer_output: Buffer,
    buffer_error: Buffer,
    error_buffer: GetBuffer,
    run_cmd: RunCmd,
    lock: Mutex<()>,
}

/// The library, loaded on first use; `None` where it is not installed.
fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| match load() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::info!(error = %e, "libnftables not loaded; rulesets go through the nft executable");
            None
        }
    })
    .as_ref()
}

fn load() -> Result<Lib> {
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is
    // never closed, so the symbols below stay valid for the process.
    let handle = unsafe {
        libc::dlopen(
            c"libnftables.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if handle.is_null() {
        return Err(anyhow!("dlopen libnftables.so.1 failed"));
    }
    let sym = |name: &CStr| -> Result<*mut c_void> {
        // SAFETY: `handle` is a live dlopen handle, `name` NUL-terminated.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(anyhow!("libnftables has no {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is the libnftables function of that name, whose
    // C signature (libnftables.h, stable since 0.9) the type spells out.
    unsafe {
        Ok(Lib {
            ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
            ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
            output_set_flags: std::mem::transmute::<*mut c_void, SetFlags>(sym(
                c"nft_ctx_output_set_flags",
            )?),
            buffer_output: std::mem::transmute::<*mut c_void, Buffer>(sym(
                c"nft_ctx_buffer_output",
            )?),
            buffer_error: std::mem::transmute::<*mut c_void, Buffer>(sym(c"nft_ctx_buffer_error")?),
            error_buffer: std::mem::transmute::<*mut c_void, GetBuffer>(sym(
                c"nft_ctx_get_error_buffer",
            )?),
            run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(c"nft_run_cmd_from_buffer")?),
            lock: Mutex::new(()),
        })
    }
}

/// Whether the library is there.
pub fn available() -> bool {
    lib().is_some()
}

/// Applies a JSON batch (what `nft -j -f -` reads) in the calling thread's
/// netns; `None` when the library is not there. An error carries
/// libnftables' own message.
pub fn run_json(batch: &[u8]) -> Option<Result<()>> {
    let lib = lib()?;
    let cmd = match CString::new(batch) {
        Ok(c) => c,
        Err(_) => return Some(Err(anyhow!("the ruleset holds a NUL byte"))),
    };
    let tid = nix::unistd::gettid().as_raw();
    let done = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("weft-nftables".into())
            .spawn_scoped(s, || {
                own_file_table()?;
                enter_netns_of(tid)?;
                run(lib, &cmd)
            })
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow!("the libnftables call panicked")))
            })
    });
    Some(done.unwrap_or_else(|e| Err(anyhow!("start a libnftables thread: {e}"))))
}

/// Gives the calling thread a file table of its own holding only stdin,
/// stdout and stderr.
fn own_file_table() -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_FILES).context("unshare the file table")?;
    // SAFETY: closes only fds of this thread's private copy of the table;
    // nothing on this thread holds any of them.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("close the inherited fds");
    }
    Ok(())
}

/// Moves the calling thread into the netns thread `tid` of this process is
/// in (a path: this thread cannot see the caller's fds).
fn enter_netns_of(tid: i32) -> Result<()> {
    let ns = File::open(format!("/proc/self/task/{tid}/ns/net"))
        .with_context(|| format!("open the netns of thread {tid}"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("enter the caller's netns")
}

fn run(lib: &Lib, cmd: &CStr) -> Result<()> {
    let _serial = lib.lock.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the context is created, used and freed here, by this thread
    // alone (its netlink socket opens in this thread's netns, which is the
    // caller's, and in this thread's small file table); the buffers
    // it returns are read before it is freed.
    unsafe {
        let ctx = (lib.ctx_new)(CTX_DEFAULT);
        if ctx.is_null() {
            return Err(anyhow!("nft_ctx_new failed"));
        }
        (lib.output_set_flags)(ctx, OUTPUT_JSON);
        // Buffered, so nothing is printed on the daemon's stdout/stderr.
        (lib.buffer_output)(ctx);
        (lib.buffer_error)(ctx);
        let rc = (lib.run_cmd)(ctx, cmd.as_ptr());
        let result = if rc == 0 {
            Ok(())
        } else {
            let err = (lib.error_buffer)(ctx);
            let msg = if err.is_null() {
                String::new()
            } else {
                CStr::from_ptr(err).to_string_lossy().trim().to_string()
            };
            Err(anyhow!("{msg}"))
        };
        (lib.ctx_free)(ctx);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
    }

    /// In a netns of its own: a good batch applies, a refused one names
    /// the problem in libnftables' words and applies nothing of itself.
    #[test]
    fn batches_apply_whole_or_not_at_all_with_the_reason() {
        if !nix::unistd::geteuid().is_root() || !available() {
            assert!(
                !ci(),
                "needs root and libnftables.so.1 (scripts/setup.sh installs nftables)"
            );
            println!("SKIPPED: batches_apply_whole_or_not_at_all_with_the_reason: needs root and libnftables");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let table = |verb: &str, name: &str| {
                format!(r#"{{"nftables":[{{"{verb}":{{"table":{{"family":"ip","name":"{name}"}}}}}}]}}"#)
            };
            run_json(table("add", "good").as_bytes()).unwrap().unwrap();
            let refused = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"bad"}}},{"add":{"rule":{"family":"ip","table":"bad","chain":"missing","expr":[{"accept":null}]}}}]}"#;
            let err = run_json(refused.as_bytes()).unwrap().unwrap_err().to_string();
            assert!(err.contains("missing") || err.contains("No such file"), "{err}");
            // The table of the refused batch was not left behind.
            assert!(run_json(table("delete", "bad").as_bytes()).unwrap().is_err());
            run_json(table("delete", "good").as_bytes()).unwrap().unwrap();
        })
        .join()
        .unwrap();
    }

    /// A caller holding more than FD_SETSIZE (1024) fds: libnftables'
    /// `select()` on a socket numbered past it would abort the process.
    #[test]
    fn a_caller_with_over_a_thousand_fds_still_applies_batches() {
        if !nix::unistd::geteuid().is_root() || !available() {
            assert!(
                !ci(),
                "needs root and libnftables.so.1 (scripts/setup.sh installs nftables)"
            );
            println!("SKIPPED: a_caller_with_over_a_thousand_fds_still_applies_batches: needs root and libnftables");
            return;
        }
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        if soft < 1300 {
            assert!(
                hard >= 1300,
                "the fd hard limit ({hard}) is below what the test needs"
            );
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
                .unwrap();
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let held: Vec<File> = (0..1200).map(|_| File::open("/dev/null").unwrap()).collect();
            let table = |verb: &str| {
                format!(r#"{{"nftables":[{{"{verb}":{{"table":{{"family":"ip","name":"many_fds"}}}}}}]}}"#)
            };
            for _ in 0..3 {
                run_json(table("add").as_bytes()).unwrap().unwrap();
                run_json(table("delete").as_bytes()).unwrap().unwrap();
            }
            drop(held);
        })
        .join()
        .unwrap();
    }

    /// Nothing stays in the caller's netns after a call: a thread there
    /// would keep it alive after it is deleted (with every link in it).
    #[test]
    fn no_thread_stays_in_the_callers_netns() {
        if !nix::unistd::geteuid().is_root() || !available() {
            assert!(
                !ci(),
                "needs root and libnftables.so.1 (scripts/setup.sh installs nftables)"
            );
            println!("SKIPPED: no_thread_stays_in_the_callers_netns: needs root and libnftables");
            return;
        }
        let app_ns = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let t = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"leave"}}}]}"#;
            run_json(t.as_bytes()).unwrap().unwrap();
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let inside: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| std::fs::read_link(t.path().join("ns/net")).is_ok_and(|n| n == app_ns))
            .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default())
            .collect();
        assert!(
            inside.is_empty(),
            "threads left in the caller's netns: {inside:?}"
        );
    }
}
