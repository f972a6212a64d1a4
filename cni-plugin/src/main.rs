//! `weft-cni`: the binary a container runtime executes.

use std::io::Write;

fn main() {
    let env = weft_cni::Env::from_process();
    let outcome = weft_cni::run(
        &env,
        &mut std::io::stdin().lock(),
        &mut weft_cni::client::talk,
    );
    // Never `println!`: it panics when stdout is closed.
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    match outcome {
        Ok(done) => {
            if let Some(w) = done.warning {
                let _ = writeln!(stderr, "weft-cni: warning: {w}");
            }
            if let Some(out) = done.stdout {
                if writeln!(stdout, "{out}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // The runtime cannot get the result: not a success.
                    let _ = writeln!(stderr, "weft-cni: cannot write the result to stdout");
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json());
            let _ = stdout.flush();
            let _ = writeln!(stderr, "weft-cni: {e}");
            std::process::exit(1);
        }
    }
}
