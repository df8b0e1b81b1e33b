//! The `fhirseal-conformance` command: exit 0 and a JUnit file when the cases pass, exit 1 when
//! one fails (a case of one's own from `--cases`), exit 2 when it cannot run.

use std::process::Command;

use crate::common::hapi;

fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhirseal-conformance"))
}

#[test]
fn passing_cases_exit_zero_and_write_junit() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("reports/conformance.xml");
    let output = command()
        .args(["--endpoint", &hapi(), "--only", "read", "--junit"])
        .arg(&junit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("read-unknown"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testcase classname=\"conformance.read\" name=\"vread\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"0\""), "{xml}");
}

#[test]
fn a_failing_case_of_ones_own_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        r#"
[[case]]
name = "mine-metadata-is-not-a-patient"
area = "mine"
[[case.step]]
method = "GET"
path = "metadata"
expect.status = 200
expect.body = [ { at = "/resourceType", equals = "Patient" } ]
"#,
    )
    .unwrap();
    let junit = dir.path().join("out.xml");
    let output = command()
        .args(["--endpoint", &hapi(), "--no-builtin", "--cases"])
        .arg(dir.path())
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("mine-metadata-is-not-a-patient"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<failure message=\"GET metadata: body /resourceType"),
        "{xml}"
    );
}

#[test]
fn an_unusable_command_line_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[[case]]\nname = 1\n").unwrap();
    let output = command()
        .args(["--endpoint", "http://127.0.0.1:9/fhir", "--cases"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad.toml"));
}
