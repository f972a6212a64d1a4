//! `kubectl-weft`: Weft's command line, usable as a kubectl plugin
//! (`kubectl weft ...`, against the cluster of the current kubeconfig
//! context) or on its own against a standalone state directory.

pub mod get;
pub mod graph;
pub mod source;

/// An error and its causes on one line, like anyhow's `{:#}`, without the
/// causes whose text the line already holds: kube, hyper and I/O errors
/// often repeat their source in their own message.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "read failed: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wrap(io)).context("load config");
        assert_eq!(error_message(&e), "load config: read failed: no such file");
        let e = anyhow::anyhow!("plain").context("outer");
        assert_eq!(error_message(&e), "outer: plain");
    }
}
