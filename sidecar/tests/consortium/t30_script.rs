//! `deploy/local-consortium.sh`: starts a consortium of three `fhirseal run` nodes (no FHIR
//! server behind them), writes `consortium.json`, shows it, kills one member and starts it
//! again, stops it, starts it again from its directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::serial;

/// A base port P with the ports the script takes for `n` members free on loopback: P+I
/// (FHIR), P+100+I (governance), P+200 (the join desk), P+300+I (HAPI, with `--hapi`); taken
/// below the ephemeral range ([`crate::ports`]).
pub fn free_base(n: u16) -> u16 {
    let offsets: Vec<u16> = (1..=n)
        .flat_map(|i| [i, 100 + i, 300 + i])
        .chain([200])
        .collect();
    crate::ports::free_block(400, &offsets)
}

/// Runs the script with `args` on the consortium in `dir`; returns what it printed.
pub fn script(dir: &Path, args: &[&str]) -> String {
    script_with(dir, args, &[])
}

/// [`script`], with `env` set for it and the nodes it starts.
pub fn script_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-consortium.sh");
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .env("FHIRSEAL_BIN", env!("CARGO_BIN_EXE_fhirseal"))
        .env("FHIRSEAL_CONSORTIUM_DIR", dir)
        .env_remove("FHIRSEAL_CONFIG")
        .envs(env.iter().copied())
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
pub struct StopOnDrop(pub PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-consortium.sh");
        let _stopped = Command::new("bash")
            .arg(path)
            .arg("stop")
            .env("FHIRSEAL_BIN", env!("CARGO_BIN_EXE_fhirseal"))
            .env("FHIRSEAL_CONSORTIUM_DIR", &self.0)
            .output();
    }
}

/// `consortium.json`.
pub fn consortium_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("consortium.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("consortium.json: {e}\n{text}"))
}

#[test]
fn the_script_starts_shows_kills_restarts_and_stops_a_consortium() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let base = free_base(3);
    let port = base.to_string();
    let _stop = StopOnDrop(dir.clone());
    let started = script(&dir, &["start", "3", "--voters", "2", "--port", &port]);
    assert!(started.contains("voters [1, 2], learners [3]"), "{started}");

    // consortium.json: every member, its bases and its keys by role.
    let json = consortium_json(&dir);
    assert_eq!(json["regulator"], "h1");
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{json}");
    for (i, member) in members.iter().enumerate() {
        let n = u16::try_from(i).unwrap() + 1;
        assert_eq!(member["name"], format!("h{n}"));
        let fhir = format!("http://127.0.0.1:{}", base + n);
        assert_eq!(member["fhir_base"], format!("{fhir}/fhir"));
        assert_eq!(member["ledger_api"], format!("{fhir}/ledger"));
        assert!(member.get("hapi_base").is_none(), "no --hapi: {member}");
        for role in ["clinician", "researcher", "auditor"] {
            assert_eq!(
                member["api_keys"][role].as_str().unwrap().len(),
                48,
                "{member}"
            );
        }
    }
    assert_eq!(members[0]["kind"], "regulator");
    assert_eq!(members[1]["kind"], "hospital");

    let status = script(&dir, &["status"]);
    assert_eq!(status.matches("leader 1").count(), 3, "{status}");
    assert!(status.contains("Learner"), "{status}");
    // Each member's node takes part: admitted, with the link key.
    for n in 1..=3 {
        assert!(status.contains(&format!("(h{n}, active)")), "{status}");
    }

    // A member killed and started again: it rejoins with its membership and keys.
    let certificate = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("h3 "))
            .and_then(|l| l.split_whitespace().nth(7))
            .map(str::to_owned)
    };
    let before = certificate(&status);
    let killed = script(&dir, &["kill", "h3"]);
    assert!(killed.contains("h3 killed"), "{killed}");
    assert!(script(&dir, &["status"]).contains("== h3 (stopped)"));
    let again = script(&dir, &["start-member", "h3"]);
    assert!(again.contains("(h3, "), "{again}");
    assert_eq!(certificate(&script(&dir, &["status"])), before);

    let stopped = script(&dir, &["stop"]);
    assert_eq!(stopped.matches("stopped").count(), 3, "{stopped}");
    let restarted = script(&dir, &["start"]);
    assert!(restarted.contains("h3 "), "{restarted}");
    script(&dir, &["stop"]);
    for n in 1..=3 {
        assert!(!dir.join(format!("h{n}/pid")).exists());
    }
}
