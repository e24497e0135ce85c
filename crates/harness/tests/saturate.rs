//! `attn saturate` end to end on its test-only tiny profile (seconds): the
//! binary writes the results file and the docs, the docs carry the
//! results' numbers, `--report-only` regenerates the same page from the
//! file, a missing file is an error naming it that leaves the docs alone;
//! and the committed `docs/saturation.md` is what the committed
//! `results/saturation.json` gives.

use harness::report::saturation::{PLOTS, render};
use harness::results::workspace_root;
use harness::saturate::results::load;

mod support;
use support::attn;

#[test]
fn a_tiny_run_writes_results_and_docs_and_report_only_regenerates_them() {
    let dir = tempfile::tempdir().unwrap();
    let (results, docs) = (dir.path().join("r/saturation.json"), dir.path().join("docs"));
    let run = |extra: &[&str]| {
        attn()
            .arg("saturate")
            .args(extra)
            .arg("--results")
            .arg(&results)
            .arg("--docs")
            .arg(&docs)
            .args(["--threads", "2"])
            .output()
            .unwrap()
    };
    let out = run(&["--tiny"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = load(&results).unwrap();
    assert_eq!(file.profile, "tiny");
    assert_eq!(file.single.len(), 2 * 2 * 2 * 3, "inputs × N × t × modifiers");
    assert_eq!(file.depth.len(), 2 * 3, "t × modifiers");
    assert!(file.depth.iter().all(|r| r.layers.len() == file.settings.depth.layers));
    assert_eq!(file.threads, 2);
    let md = std::fs::read_to_string(docs.join("saturation.md")).unwrap();
    for p in PLOTS {
        assert!(docs.join(p).exists(), "{p} not written");
        assert!(md.contains(p), "{p} not linked");
    }
    assert!(md.contains(&format!("commit `{}`", file.machine.git_commit)));
    assert!(md.contains("profile `tiny`"));
    // the run's last point (N = 512, t = 8) has its row in the full-data
    // table
    let last = file.single.last().unwrap();
    let want = format!("| {} | {} | 512 | 8 |", last.input, last.modifier);
    assert!(md.contains(&want), "no full-data row {want}");

    // --report-only: the same page from the file (no run)
    std::fs::remove_file(docs.join("saturation.md")).unwrap();
    let out = run(&["--report-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(docs.join("saturation.md")).unwrap(), md);

    // a missing results file: an error naming it, the docs untouched
    std::fs::remove_file(&results).unwrap();
    let out = run(&["--report-only"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("saturation.json"), "{err}");
    assert_eq!(std::fs::read_to_string(docs.join("saturation.md")).unwrap(), md);
}

#[test]
fn committed_saturation_docs_match_committed_results() {
    let root = workspace_root();
    let Ok(run) = load(&root.join("results/saturation.json")) else {
        eprintln!("no results/saturation.json yet: nothing to compare");
        return;
    };
    let got = std::fs::read_to_string(root.join("docs/saturation.md")).unwrap_or_default();
    assert!(
        got == render(&run, "results/saturation.json"),
        "docs/saturation.md is not what `attn saturate --report-only` makes of \
         results/saturation.json"
    );
}
