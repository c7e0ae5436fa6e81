//! The examples the README sends people to behave as command-line tools: `--help` exits 0 and
//! lists every flag with its default; an unknown flag is a clear error with a nonzero status.
//!
//! `cargo test` builds the examples next to the test binaries (`target/<profile>/examples/`).
//! Run with a target filter (`cargo test --test readme_examples`) they may not be built; then
//! each check prints one line and skips.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> Option<PathBuf> {
    // target/<profile>/deps/readme_examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().ok()?;
    let path = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        Some(path)
    } else {
        println!("skipping {name}: not built (run the whole `cargo test`)");
        None
    }
}

/// `--help` exits 0; every line that names a flag also names its default.
fn check_help(name: &str, flags: &[&str]) {
    let Some(exe) = example(name) else { return };
    let out = Command::new(&exe).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name} --help: {}", out.status);
    for flag in flags {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{name} --help does not list {flag}:\n{text}"));
        assert!(
            line.contains("[default:"),
            "{name} {flag} has no default: {line}"
        );
    }
}

/// An unknown flag exits with status 2 and says which flag.
fn check_unknown_flag(name: &str) {
    let Some(exe) = example(name) else { return };
    let out = Command::new(&exe).arg("--no-such-flag").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {err}");
    assert!(
        err.contains("--no-such-flag"),
        "{name} does not name the flag: {err}"
    );
}

#[test]
fn landing_page_is_a_tool() {
    check_help(
        "landing_page",
        &[
            "--duration",
            "--threads",
            "--compute-ms",
            "--ttl-ms",
            "--strategies",
            "--store",
            "--redis-url",
            "--procs",
            "--plot",
            "--json",
            "--prefix",
            "--worker",
        ],
    );
    check_unknown_flag("landing_page");
}

#[test]
fn landing_page_runs_auto_by_default() {
    let Some(exe) = example("landing_page") else {
        return;
    };
    let out = Command::new(&exe).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let strategies = text
        .lines()
        .find(|l| l.trim_start().starts_with("--strategies"))
        .unwrap();
    assert!(strategies.contains(",auto]"), "{strategies}");
}

#[test]
fn beta_advisor_is_a_tool() {
    check_help(
        "beta_advisor",
        &[
            "--rate",
            "--delta-ms",
            "--ttl-ms",
            "--beta",
            "--seed",
            "--cycles",
            "--json",
            "--plot",
        ],
    );
    check_unknown_flag("beta_advisor");
}

#[test]
fn beta_advisor_recommends_a_beta_and_labels_its_columns() {
    let Some(exe) = example("beta_advisor") else {
        return;
    };
    let out = Command::new(&exe)
        .args(["--rate", "1000", "--cycles", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("recommended: beta = "), "{text}");
    assert!(text.contains("<- recommended"), "{text}");
    assert!(
        text.contains("UNCOORDINATED") && text.contains("HERDLESS"),
        "{text}"
    );
}

#[test]
fn service_is_a_tool() {
    check_help(
        "service",
        &[
            "--strategy ",
            "--store",
            "--redis-url",
            "--database-url",
            "--table",
            "--rows",
            "--ttl-ms",
            "--db-connections",
            "--port",
            "--drive",
            "--strategies",
            "--duration",
            "--connections",
            "--threads",
        ],
    );
    check_unknown_flag("service");
}

#[test]
fn plot_demo_is_a_tool() {
    check_help("plot_demo", &["OUT_DIR"]);
    check_unknown_flag("plot_demo");
}
