//! `weft-cni`: the binary a container runtime executes.

use std::io::Read;

fn main() {
    let env = weft_cni::Env::from_process();
    let mut stdin = String::new();
    let outcome = match std::io::stdin().read_to_string(&mut stdin) {
        Ok(_) => weft_cni::run(&env, &stdin, &mut weft_cni::client::talk),
        Err(e) => Err(weft_cni::error::CniError::decode(format!(
            "cannot read stdin: {e}"
        ))),
    };
    match outcome {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json());
            eprintln!("weft-cni: {e}");
            std::process::exit(1);
        }
    }
}
