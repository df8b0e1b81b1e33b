//! The ledger explorer (`/ledger/ui`) in headless Chromium, against a sidecar in front of the
//! real HAPI: the page loads, lists the recent blocks with their certificates, and verifies a
//! resource written in the test step by step. The page as Chromium rendered it is kept as a
//! screenshot in `target/explorer/explorer.png`. Chromium is `chromium` on the PATH, or
//! `FHIRSEAL_CHROMIUM` (CI installs Debian's).

use std::path::PathBuf;
use std::process::Command;

use http::{Method, StatusCode};

use crate::common::*;

fn chromium() -> String {
    std::env::var("FHIRSEAL_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Chromium run headless on `url` with `extra` arguments; what it printed on stdout.
async fn headless(url: String, extra: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--virtual-time-budget=15000",
                "--window-size=1280,1800",
            ])
            .args(&extra)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (install Debian's chromium, or set FHIRSEAL_CHROMIUM)",
                    chromium()
                )
            });
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("explorer");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("explorer.png")
}

#[tokio::test]
async fn the_explorer_lists_blocks_and_verifies_a_write_step_by_step() {
    let sidecar = start_in_front_of_hapi().await;
    let family = unique("Explorer");
    let created = post_json(&format!("{}/Patient", sidecar.base), &patient(&family)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    anchored(&sidecar.ledger).await;

    // The page, its script and style are served without a key; nothing else is.
    let page = send_raw(
        Method::GET,
        &format!("http://{}/ledger/ui", sidecar.addr),
        &[],
        "",
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text().contains("data-fhir-base=\"/fhir\""),
        "{}",
        page.text()
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let missing = send_raw(
        Method::GET,
        &format!("http://{}/ledger/ui/nothing", sidecar.addr),
        &[],
        "",
    )
    .await;
    missing.assert_outcome(404);
    let posted = send_raw(
        Method::POST,
        &format!("http://{}/ledger/ui", sidecar.addr),
        &[],
        "x",
    )
    .await;
    posted.assert_outcome(405);

    let url = format!(
        "http://{}/ledger/ui#key={AUDITOR_KEY}&block=1&type=Patient&id={id}&version=1",
        sidecar.addr
    );
    let dom = headless(url.clone(), vec!["--dump-dom".to_owned()]).await;
    assert!(dom.contains("<tr class=\"row\">"), "no block rows: {dom}");
    assert!(
        dom.contains("precommit") || dom.contains("<td>1</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"verified\">verified: true<"),
        "not verified: {dom}"
    );
    assert!(dom.contains("The block is final"), "{dom}");
    assert!(
        !dom.contains(&family),
        "the explorer shows no identity: {dom}"
    );

    // Without a key the page says so and shows no data.
    let dom = headless(
        format!("http://{}/ledger/ui", sidecar.addr),
        vec!["--dump-dom".to_owned()],
    )
    .await;
    assert!(dom.contains("Enter an API key"), "{dom}");
    assert!(!dom.contains("<tr class=\"row\">"), "{dom}");

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    headless(url, vec![format!("--screenshot={}", shot.display())]).await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
}
