//! `deploy/local-consortium.sh`: starts a consortium of three nodes, shows it, stops it, starts
//! it again from its directories.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::support::serial;

/// A base port P with P+1..=P+3 and P+100 free on loopback.
fn free_base() -> u16 {
    for _ in 0..100 {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port().saturating_sub(1);
        drop(probe);
        if !(1024..=65_000).contains(&base) {
            continue;
        }
        let ports = [base + 1, base + 2, base + 3, base + 100];
        if ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports");
}

fn script(args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-consortium.sh");
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .env("FHIRSEAL_BIN", env!("CARGO_BIN_EXE_fhirseal"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "local-consortium.sh {args:?}: {text}");
    text
}

/// Stops the script's nodes even when the test fails halfway.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-consortium.sh");
        let _stopped = Command::new("bash")
            .arg(path)
            .args(["stop", "--dir", &self.0])
            .env("FHIRSEAL_BIN", env!("CARGO_BIN_EXE_fhirseal"))
            .output();
    }
}

#[test]
fn the_script_starts_shows_and_stops_a_consortium() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let dir = dir.to_str().unwrap();
    let base = free_base().to_string();
    let _stop = StopOnDrop(dir.to_owned());
    let started = script(&["start", "3", "--voters", "2", "--dir", dir, "--port", &base]);
    assert!(started.contains("voters [1, 2], learners [3]"), "{started}");
    let status = script(&["status", "--dir", dir]);
    assert_eq!(status.matches("leader 1").count(), 3, "{status}");
    assert!(status.contains("Learner"), "{status}");
    let stopped = script(&["stop", "--dir", dir]);
    assert_eq!(stopped.matches("stopped").count(), 3, "{stopped}");
    let restarted = script(&["start", "--dir", dir]);
    assert!(restarted.contains("h3 "), "{restarted}");
    script(&["stop", "--dir", dir]);
    for i in 1..=3 {
        assert!(!Path::new(dir).join(format!("node{i}/pid")).exists());
    }
}
