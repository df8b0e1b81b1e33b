//! `fhirseal report` against a real node in front of the real HAPI: two Synthea bundles
//! written, read back as a clinician and a researcher, the chain read as an auditor, the node's
//! data directory scanned, the node SIGKILLed and started again by the commands given; the
//! section 4.2 metrics come out as the node's behaviour makes them (no leak, every read as the
//! policy allows and traced, a verified chain, a measured recovery), as a table and in
//! report.json and report.html.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn the_report_measures_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    let port = free_port();
    config.server.listen = ([127, 0, 0, 1], port).into();
    let file = config_file(&config, dir.path());
    let pid = dir.path().join("pid");
    let start = format!(
        "RUST_LOG=warn {} run --config {} >> {} 2>&1 & echo $! > {}",
        env!("CARGO_BIN_EXE_fhirseal"),
        file.display(),
        dir.path().join("fhirseal.log").display(),
        pid.display()
    );
    // SIGKILL, and back once the process is gone (its files let go).
    let kill = format!(
        "p=$(cat {}); kill -9 $p; while kill -0 $p 2>/dev/null; do sleep 0.02; done",
        pid.display()
    );
    let started = std::process::Command::new("sh")
        .args(["-c", &start])
        .env_remove("FHIRSEAL_CONFIG")
        .status()
        .unwrap();
    assert!(started.success());
    let base = format!("http://127.0.0.1:{port}/fhir");
    let mut up = false;
    for _ in 0..300 {
        if try_get(&base.replace("/fhir", "/readyz"))
            .await
            .is_some_and(|r| r.status == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "{}",
        std::fs::read_to_string(dir.path().join("fhirseal.log")).unwrap_or_default()
    );

    let corpus: Vec<String> = synthea_files()[..2]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let out = dir.path().join("report");
    let (hapi, data, out_s) = (
        hapi(),
        config.data_dir.display().to_string(),
        out.display().to_string(),
    );
    let mut args = vec![
        "report",
        "--url",
        &base,
        "--upstream",
        &hapi,
        "--clinician-key",
        CLINICIAN_KEY,
        "--researcher-key",
        RESEARCHER_KEY,
        "--auditor-key",
        AUDITOR_KEY,
        "--data-dir",
        &data,
        "--kill-command",
        &kill,
        "--start-command",
        &start,
        "--out",
        &out_s,
        "--limit",
        "2",
    ];
    for c in &corpus {
        args.extend(["--corpus", c.as_str()]);
    }
    let (code, printed) = fhirseal_once(&args).await;
    let _ = std::process::Command::new("sh")
        .args(["-c", &kill])
        .status();
    let log = std::fs::read_to_string(dir.path().join("fhirseal.log")).unwrap_or_default();
    assert_eq!(code, 0, "{printed}\n{log}");
    for line in [
        "privacy leakage probability         0.0000 (0 of ",
        "least-visibility achievement rate   1.0000",
        "audit traceability                  1.0000",
        "governance compliance               1.0000",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }
    assert!(printed.contains("recovery: SIGKILL to ready"), "{printed}");
    assert!(!printed.contains("not measured"), "{printed}");

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(report["identityStrings"].as_u64().unwrap() > 20, "{report}");
    assert_eq!(report["leaked"]["anywhere"], 0, "{report}");
    assert_eq!(report["leaked"]["disk"], 0, "{report}");
    assert_eq!(
        report["reads"], 4,
        "two persons, read by two principals: {report}"
    );
    assert_eq!(report["writes"], 2);
    assert_eq!(report["chainVerified"], true);
    let ready = report["recoveryToReadyMs"].as_f64().unwrap();
    let final_ = report["recoveryToFinalityMs"].as_f64().unwrap();
    assert!(ready > 0.0 && final_ >= ready, "{report}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
}
