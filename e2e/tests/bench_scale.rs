//! Smoke test of `weft-bench-scale --quick`: every size of both modes ran to
//! the end and its table has a figure in every row, and every federation
//! size converged with all member plans agreeing. No figure is compared
//! with anything: timings depend on the machine.

use std::process::Command;

use weft_e2e::fedscale;
use weft_e2e::scale::report::{not_applicable, row_count};
use weft_e2e::scale::{parse_sizes, Mode, QUICK_SIZES};

/// What a cell says instead of a figure when a step did not run.
const MISSING: &[&str] = &["over cap", "timed out", "failed", "skipped", "n/a", ""];

#[test]
fn quick_run_prints_a_complete_table_per_size_and_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-bench-scale"))
        .arg("--quick")
        .output()
        .expect("running weft-bench-scale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in [Mode::Standalone, Mode::Kubernetes] {
        for size in parse_sizes(QUICK_SIZES).unwrap() {
            let header = format!("### {} | {size} |", mode.name());
            let section = stdout
                .split("\n### ")
                .map(|s| format!("### {s}"))
                .find(|s| s.starts_with(&header))
                .unwrap_or_else(|| panic!("no table {header:?} in\n{stdout}"));
            let rows: Vec<Vec<&str>> = section
                .lines()
                .filter(|l| l.starts_with("| ") && !l.starts_with("| step "))
                .map(|l| l.split('|').map(str::trim).collect())
                .collect();
            assert_eq!(rows.len(), row_count(), "{section}");
            for row in rows {
                let (label, figure) = (row[1], row[2]);
                if not_applicable(mode).contains(&label) {
                    continue;
                }
                assert!(
                    !MISSING.contains(&figure),
                    "{header}: {label} has no figure\n{section}"
                );
            }
        }
        let summary = format!("### summary: {}", mode.name());
        assert!(stdout.contains(&summary), "no {summary:?} in\n{stdout}");
    }
    // The federation rows: every quick size converged and every plan agreed.
    let fed = stdout
        .split("\n### ")
        .find(|s| s.starts_with("federation |"))
        .unwrap_or_else(|| panic!("no federation table in\n{stdout}"));
    for size in fedscale::parse_sizes(fedscale::QUICK_SIZES).unwrap() {
        let row = fed
            .lines()
            .find(|l| l.starts_with(&format!("| {} x {} |", size.sites, size.nodes)))
            .unwrap_or_else(|| panic!("no federation row for {size} in\n{fed}"));
        assert!(row.contains("| yes: "), "{row}");
    }
}
