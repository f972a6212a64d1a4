//! Tables of the scale benchmark (Markdown, so they paste into an issue):
//! one per size and mode with the growth factor from the previous size and
//! the targets of issue 10 marked PASS/MISS, then one summary per mode.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{keys, Mode, Size, Spread};

/// How a child ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every step ran.
    Complete,
    /// Killed when its RSS passed the cap (bytes).
    OverCap(u64),
    /// Killed after this many seconds.
    TimedOut(u64),
    /// It failed (the message says why).
    Failed(String),
    /// Not run (why).
    Skipped(String),
}

/// One size in one mode.
#[derive(Clone, Debug)]
pub struct Run {
    /// Mode.
    pub mode: Mode,
    /// Size.
    pub size: Size,
    /// What the child reported (see [`keys`]).
    pub metrics: BTreeMap<String, f64>,
    /// How it ended.
    pub outcome: Outcome,
    /// Largest RSS the parent sampled (bytes).
    pub rss_seen: u64,
}

impl Run {
    fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }

    /// Whether the run went over the memory cap or the time limit, so
    /// larger sizes need not be tried.
    pub fn gave_up(&self) -> bool {
        matches!(self.outcome, Outcome::OverCap(_) | Outcome::TimedOut(_))
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Count,
    Bytes,
    Rss,
}

struct Row {
    key: &'static str,
    label: &'static str,
    unit: Unit,
}

const ROWS: &[Row] = &[
    Row {
        key: keys::FULL_S,
        label: "full plan (first pass)",
        unit: Unit::Secs,
    },
    Row {
        key: keys::FULL_FIRST_S,
        label: "- its first pass alone (every MeshNode written)",
        unit: Unit::Secs,
    },
    Row {
        key: keys::FULL_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::FULL_OTHER,
        label: "- status / finalizer writes",
        unit: Unit::Count,
    },
    Row {
        key: keys::PLAN_ERRORS,
        label: "- plan errors",
        unit: Unit::Count,
    },
    Row {
        key: keys::LARGEST_MESHNODE,
        label: "largest MeshNode (JSON)",
        unit: Unit::Bytes,
    },
    Row {
        key: keys::CONVERGED_S,
        label: "converged pass (median)",
        unit: Unit::Secs,
    },
    Row {
        key: keys::CONVERGED_MAX_S,
        label: "converged pass (slowest)",
        unit: Unit::Secs,
    },
    Row {
        key: keys::CONVERGED_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::CONVERGED_OTHER,
        label: "- other writes",
        unit: Unit::Count,
    },
    Row {
        key: keys::PLAN_ONLY_S,
        label: "snapshot + plan() alone",
        unit: Unit::Secs,
    },
    Row {
        key: keys::ADD_S,
        label: "add one app (its MeshNodes written)",
        unit: Unit::Secs,
    },
    Row {
        key: keys::ADD_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::KEYS_S,
        label: "its public keys arrive",
        unit: Unit::Secs,
    },
    Row {
        key: keys::KEYS_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::MOVE_S,
        label: "move one workload",
        unit: Unit::Secs,
    },
    Row {
        key: keys::MOVE_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::RESTART_S,
        label: "operator restart: first pass",
        unit: Unit::Secs,
    },
    Row {
        key: keys::RESTART_MESHNODES,
        label: "- MeshNodes written",
        unit: Unit::Count,
    },
    Row {
        key: keys::PEAK_RSS,
        label: "peak RSS",
        unit: Unit::Rss,
    },
    Row {
        key: keys::SETUP_S,
        label: "(generating the cluster)",
        unit: Unit::Secs,
    },
];

/// Rows of a size's table.
pub fn row_count() -> usize {
    ROWS.len()
}

/// Labels of the rows a complete run in `mode` leaves `n/a` (measured in
/// the other mode only).
pub fn not_applicable(mode: Mode) -> Vec<&'static str> {
    ROWS.iter()
        .filter(|r| {
            mode == Mode::Standalone && [keys::PLAN_ONLY_S, keys::FULL_FIRST_S].contains(&r.key)
        })
        .map(|r| r.label)
        .collect()
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// A limit from the issue: the figure must be at most `max` (below it when
/// `strict`).
struct Target {
    max: f64,
    strict: bool,
    unit: Unit,
}

impl Target {
    fn le(max: f64, unit: Unit) -> Option<Target> {
        Some(Target {
            max,
            strict: false,
            unit,
        })
    }

    fn holds(&self, v: f64) -> bool {
        if self.strict {
            v < self.max
        } else {
            v <= self.max
        }
    }

    fn text(&self) -> String {
        let op = if self.strict { "<" } else { "<=" };
        format!("{op} {}", fmt(self.max, self.unit))
    }
}

/// The targets of issue 10 for `key` at `size`. Time and memory targets
/// exist for the sizes only; write counts hold at every size.
fn target(key: &str, size: &Size) -> Option<Target> {
    let big = size.nodes == 1000 && size.apps == 10_000 && size.spread == Spread::Nodes(3);
    let all = size.nodes == 2000 && size.apps == 1 && size.spread == Spread::All;
    match key {
        keys::FULL_S if big => Target::le(5.0, Unit::Secs),
        keys::FULL_S if all => Target::le(2.0, Unit::Secs),
        keys::CONVERGED_S if big => Target::le(0.1, Unit::Secs),
        keys::ADD_S if big => Target::le(0.05, Unit::Secs),
        keys::MOVE_S if big => Target::le(0.02, Unit::Secs),
        keys::PEAK_RSS if big || all => Target::le(500e6, Unit::Rss),
        keys::LARGEST_MESHNODE if all => Some(Target {
            max: 512.0 * KIB,
            strict: true,
            unit: Unit::Bytes,
        }),
        // etcd refuses larger objects.
        keys::LARGEST_MESHNODE => Target::le(1.5 * MIB, Unit::Bytes),
        keys::PLAN_ERRORS
        | keys::CONVERGED_MESHNODES
        | keys::CONVERGED_OTHER
        | keys::RESTART_MESHNODES => Target::le(0.0, Unit::Count),
        // Only the nodes the change touches: the app's own nodes; for a
        // move, the app's nodes plus the one it moved to.
        keys::ADD_MESHNODES | keys::KEYS_MESHNODES => {
            Target::le(size.added_app_nodes() as f64, Unit::Count)
        }
        keys::MOVE_MESHNODES => {
            Target::le((size.per_app() + 1).min(size.nodes) as f64, Unit::Count)
        }
        _ => None,
    }
}

fn count(v: f64) -> String {
    let digits = format!("{}", v.round() as i64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Secs if v >= 1.0 => format!("{v:.2} s"),
        Unit::Secs if v >= 0.01 => format!("{:.0} ms", v * 1e3),
        Unit::Secs => format!("{:.2} ms", v * 1e3),
        Unit::Count => count(v),
        Unit::Bytes if v >= MIB => format!("{:.2} MiB", v / MIB),
        Unit::Bytes if v >= KIB => format!("{:.1} KiB", v / KIB),
        Unit::Bytes => format!("{v:.0} B"),
        Unit::Rss => format!("{:.0} MB", v / 1e6),
    }
}

/// The cell of `key` in `run`: the figure, or why there is none.
fn cell(run: &Run, key: &str, unit: Unit) -> String {
    if let Some(v) = run.get(key) {
        return fmt(v, unit);
    }
    match &run.outcome {
        Outcome::OverCap(cap) if key == keys::PEAK_RSS => {
            format!("> {} (over cap)", fmt(*cap as f64, Unit::Rss))
        }
        Outcome::OverCap(_) => "over cap".into(),
        Outcome::TimedOut(_) => "timed out".into(),
        Outcome::Failed(_) => "failed".into(),
        Outcome::Skipped(_) => "skipped".into(),
        Outcome::Complete => "n/a".into(),
    }
}

fn verdict(run: &Run, key: &str, t: &Target) -> &'static str {
    match (run.get(key), &run.outcome) {
        (Some(v), _) => {
            if t.holds(v) {
                "PASS"
            } else {
                "MISS"
            }
        }
        (None, Outcome::OverCap(_) | Outcome::TimedOut(_) | Outcome::Skipped(_)) => "MISS",
        (None, _) => "?",
    }
}

fn growth(prev: Option<&Run>, run: &Run, key: &str) -> String {
    match (prev.and_then(|p| p.get(key)), run.get(key)) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("x{:.2}", b / a),
        _ => String::new(),
    }
}

fn describe(size: &Size) -> String {
    let per = match size.spread {
        Spread::All => format!(
            "every node; the app added runs on {}",
            size.added_app_nodes()
        ),
        Spread::Nodes(_) => format!("{} nodes each", size.per_app()),
    };
    format!(
        "{} nodes x {} apps ({per}; {} workloads)",
        count(size.nodes as f64),
        count(size.apps as f64),
        count(size.workloads() as f64)
    )
}

fn input_growth(prev: &Size, size: &Size) -> String {
    let r = |a: usize, b: usize| b as f64 / a.max(1) as f64;
    format!(
        "nodes x{:.2}, apps x{:.2}, workloads x{:.2}",
        r(prev.nodes, size.nodes),
        r(prev.apps, size.apps),
        r(prev.workloads(), size.workloads())
    )
}

/// Whether growth from `a` to `b` means something: same mode, and apps
/// spread the same way (a fixed count, or every node).
pub fn same_shape(a: &Run, b: &Run) -> bool {
    a.mode == b.mode
        && matches!(
            (a.size.spread, b.size.spread),
            (Spread::All, Spread::All) | (Spread::Nodes(_), Spread::Nodes(_))
        )
}

/// The table of one run; `prev` is the previous size of the same shape and
/// mode ([`same_shape`]).
pub fn size_table(run: &Run, prev: Option<&Run>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} | {} | {}",
        run.mode.name(),
        run.size,
        describe(&run.size)
    );
    if let Some(p) = prev {
        let _ = writeln!(
            out,
            "growth from {}: {}",
            p.size,
            input_growth(&p.size, &run.size)
        );
    }
    match &run.outcome {
        Outcome::Complete => {}
        Outcome::OverCap(cap) => {
            let _ = writeln!(
                out,
                "STOPPED: RSS passed the cap of {} (last sampled {})",
                fmt(*cap as f64, Unit::Rss),
                fmt(run.rss_seen as f64, Unit::Rss)
            );
        }
        Outcome::TimedOut(s) => {
            let _ = writeln!(out, "STOPPED: still running after {s} s");
        }
        Outcome::Failed(why) => {
            let _ = writeln!(out, "FAILED: {why}");
        }
        Outcome::Skipped(why) => {
            let _ = writeln!(out, "SKIPPED: {why}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| step | figure | growth | target | |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in ROWS {
        let t = target(row.key, &run.size);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.label,
            cell(run, row.key, row.unit),
            growth(prev, run, row.key),
            t.as_ref().map(Target::text).unwrap_or_default(),
            t.as_ref().map(|t| verdict(run, row.key, t)).unwrap_or("")
        );
    }
    out
}

/// With its write count: `1.40 s, 100 written`.
fn with_writes(run: &Run, secs: &str, writes: &str) -> String {
    let time = cell(run, secs, Unit::Secs);
    match run.get(writes) {
        Some(w) => format!("{time}, {} written", count(w)),
        None => time,
    }
}

/// Every run of `mode` as one table (the layout), then the growth
/// factors between successive sizes.
pub fn summary(runs: &[Run], mode: Mode) -> String {
    let runs: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
    let mut out = String::new();
    let _ = writeln!(out, "### summary: {}", mode.name());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| nodes | apps | nodes/app | full plan | converged pass | add one app | move one workload | restart | peak RSS | largest MeshNode |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let per = match r.size.spread {
            Spread::All => "all".to_string(),
            Spread::Nodes(_) => r.size.per_app().to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {per} | {} | {} | {} | {} | {} | {} | {} |",
            count(r.size.nodes as f64),
            count(r.size.apps as f64),
            with_writes(r, keys::FULL_S, keys::FULL_MESHNODES),
            with_writes(r, keys::CONVERGED_S, keys::CONVERGED_MESHNODES),
            with_writes(r, keys::ADD_S, keys::ADD_MESHNODES),
            with_writes(r, keys::MOVE_S, keys::MOVE_MESHNODES),
            with_writes(r, keys::RESTART_S, keys::RESTART_MESHNODES),
            cell(r, keys::PEAK_RSS, Unit::Rss),
            cell(r, keys::LARGEST_MESHNODE, Unit::Bytes),
        );
    }
    let pairs: Vec<(&Run, &Run)> = runs
        .windows(2)
        .filter(|p| same_shape(p[0], p[1]))
        .map(|p| (p[0], p[1]))
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| growth | inputs | full plan | converged pass | add one app | move one workload | peak RSS | largest MeshNode |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for (p, r) in pairs {
            let _ = writeln!(
                out,
                "| {} -> {} | {} | {} | {} | {} | {} | {} | {} |",
                p.size,
                r.size,
                input_growth(&p.size, &r.size),
                growth(Some(p), r, keys::FULL_S),
                growth(Some(p), r, keys::CONVERGED_S),
                growth(Some(p), r, keys::ADD_S),
                growth(Some(p), r, keys::MOVE_S),
                growth(Some(p), r, keys::PEAK_RSS),
                growth(Some(p), r, keys::LARGEST_MESHNODE),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(size: &str, metrics: &[(&str, f64)], outcome: Outcome) -> Run {
        Run {
            mode: Mode::Standalone,
            size: size.parse().unwrap(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            outcome,
            rss_seen: 0,
        }
    }

    #[test]
    fn targets_are_marked_and_growth_is_a_ratio() {
        let a = run(
            "500x5000",
            &[(keys::FULL_S, 2.0), (keys::CONVERGED_MESHNODES, 0.0)],
            Outcome::Complete,
        );
        let b = run(
            "1000x10000",
            &[(keys::FULL_S, 8.0), (keys::CONVERGED_MESHNODES, 3.0)],
            Outcome::OverCap(4 << 30),
        );
        let t = size_table(&b, Some(&a));
        assert!(t.contains("| full plan (first pass) | 8.00 s | x4.00 | <= 5.00 s | MISS |"));
        assert!(
            t.contains("| - MeshNodes written | 3 |  | <= 0 | MISS |"),
            "{t}"
        );
        assert!(t.contains("| peak RSS | > 4295 MB (over cap) |  | <= 500 MB | MISS |"));
        assert!(t.contains("nodes x2.00, apps x2.00"));
        let s = summary(&[a, b], Mode::Standalone);
        assert!(s.contains("| 1,000 | 10,000 | 3 | 8.00 s |"), "{s}");
        assert!(s.contains("| 500x5000 -> 1000x10000 |"));
    }

    #[test]
    fn figures_are_readable() {
        assert_eq!(fmt(0.0042, Unit::Secs), "4.20 ms");
        assert_eq!(fmt(0.25, Unit::Secs), "250 ms");
        assert_eq!(fmt(183.0 * KIB, Unit::Bytes), "183.0 KiB");
        assert_eq!(count(1234567.0), "1,234,567");
    }
}
