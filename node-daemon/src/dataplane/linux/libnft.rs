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
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Result};

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
    Some(run(lib, batch))
}

fn run(lib: &Lib, batch: &[u8]) -> Result<()> {
    let cmd = CString::new(batch).map_err(|_| anyhow!("the ruleset holds a NUL byte"))?;
    let _serial = lib.lock.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the context is created, used and freed here, by this thread
    // alone (its netlink socket opens in this thread's netns); the buffers
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
}
