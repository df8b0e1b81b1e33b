//! The stores as a hospital's engineer meets them: a backup taken while the real `fhirseal`
//! binary runs in front of HAPI, restored into a fresh directory, every patient read back with
//! identity and `$verify` true; damaged store files (bytes flipped, files cut short) refused at
//! start and reported by `fhirseal check`; an altered sealed record never served as identity.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::common::*;

/// `(id, version, family)` of a Patient written through `base`.
async fn write_patient(base: &str, family: &str) -> (String, String, String) {
    let reply = post_json(&format!("{base}/Patient"), &patient(family)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let location = reply.header("location").unwrap();
    let parts: Vec<&str> = location.rsplit('/').take(4).collect();
    (parts[2].to_owned(), parts[0].to_owned(), family.to_owned())
}

/// `$verify`'s `verified` for one resource version, with the whole answer.
async fn verified(base: &str, path: &str) -> (Value, String) {
    let reply = get(&format!("{base}/{path}/$verify")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let verified = reply.json()["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "verified")
        .map(|p| p["valueBoolean"].clone())
        .unwrap_or(Value::Null);
    (verified, reply.text())
}

/// Every patient of `written` read back through `base` with its identity, and verified.
async fn read_back(base: &str, written: &[(String, String, String)]) {
    for (id, version, family) in written {
        let reply = get(&format!("{base}/Patient/{id}")).await;
        assert_eq!(reply.status, 200, "Patient/{id}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["name"][0]["family"], family.as_str(), "{json}");
        assert_eq!(json["birthDate"], "1970-01-02", "{json}");
        // A write a restored node resolves from the intent its backup held (it was in flight
        // while the copy was made) is anchored by the node's first rounds: pending until then.
        let path = format!("Patient/{id}/_history/{version}");
        let mut answer = String::new();
        for _ in 0..600 {
            let (verified, text) = verified(base, &path).await;
            if verified == true || !text.contains("\"pending\",\"valueBoolean\":true") {
                answer = text;
                break;
            }
            answer = text;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            answer.contains("\"verified\",\"valueBoolean\":true"),
            "{path}: {answer}"
        );
    }
}

/// Waits until the node at `node` has anchored everything its outbox holds.
async fn settled(node: &Node) {
    let status = node.ledger("status");
    for _ in 0..600 {
        if let Some(reply) = try_get_as(&status, AUDITOR_KEY).await {
            if reply.status == 200 && reply.json()["pendingAnchors"] == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox of {} did not drain", node.base);
}

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_node_restores_every_patient_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    // A keystore of the node's own, apart from the data directory, as in production.
    config.seal.keys_dir = Some(dir.path().join("keys"));
    let node = Node::start(&mut config, &run_dir, None).await;
    let file = run_dir.join("fhirseal.toml");

    let family = unique("Backup");
    let mut written = Vec::new();
    for n in 0..6 {
        written.push(write_patient(&node.base, &format!("{family}{n}")).await);
    }
    // Backed up with keys while a clinician goes on writing, and without keys.
    let stop_writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (base, stop, family) = (node.base.clone(), stop_writing.clone(), family.clone());
        async move {
            let mut during = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                during.push(write_patient(&base, &format!("{family}-during{n}")).await);
                n += 1;
            }
            during
        }
    });
    let with_keys = dir.path().join("backup");
    let (code, printed) = fhirseal_once(&[
        "backup",
        &text(&with_keys),
        "--with-keys",
        "--config",
        &text(&file),
    ])
    .await;
    stop_writing.store(true, std::sync::atomic::Ordering::SeqCst);
    let during = writer.await.unwrap();
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("copied from the running node"),
        "{printed}"
    );
    assert!(
        printed.contains("HOLDS THE NODE'S PRIVATE KEYS"),
        "{printed}"
    );
    let without_keys = dir.path().join("backup-no-keys");
    let (code, printed) =
        fhirseal_once(&["backup", &text(&without_keys), "--config", &text(&file)]).await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("KEYS ARE NOT IN THIS BACKUP"), "{printed}");
    assert!(!without_keys.join("keys").exists());
    // The node kept serving: reads and writes after the copy.
    settled(&node).await;
    read_back(&node.base, &written).await;
    let after = write_patient(&node.base, &format!("{family}-after")).await;
    node.stop();

    // Into a fresh data directory and an empty keystore.
    let restored_dir = dir.path().join("restored-run");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let mut restored = config.clone();
    restored.data_dir = dir.path().join("restored");
    restored.seal.keys_dir = Some(dir.path().join("restored-keys"));
    let restored_file = config_file(&restored, &restored_dir);

    // A backup without keys, into a keystore without them: refused, nothing made.
    let (code, printed) = fhirseal_once(&[
        "restore",
        &text(&without_keys),
        "--config",
        &text(&restored_file),
    ])
    .await;
    assert_ne!(code, 0, "{printed}");
    assert!(printed.contains("holds no keys"), "{printed}");
    assert!(!restored.data_dir.exists());
    // Into a data directory that is not new: refused.
    let (code, printed) = fhirseal_once(&[
        "restore",
        &text(&with_keys),
        "--config",
        &text(&run_dir.join("fhirseal.toml")),
    ])
    .await;
    assert_ne!(code, 0, "{printed}");
    assert!(printed.contains("not empty"), "{printed}");

    let (code, printed) = fhirseal_once(&[
        "restore",
        &text(&with_keys),
        "--config",
        &text(&restored_file),
    ])
    .await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("copied from the backup"), "{printed}");
    let (code, printed) = fhirseal_once(&["check", "--config", &text(&restored_file)]).await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("vault: sound"), "{printed}");

    let node = Node::start(&mut restored, &restored_dir, None).await;
    // What the backup's outbox held is anchored by the restored node.
    settled(&node).await;
    read_back(&node.base, &written).await;
    // Written while the copy was made: each is whole in the copy (identity, index and anchor)
    // or not in it at all; the check above found no record without its index or anchor.
    for (id, version, family) in &during {
        let reply = get(&format!("{}/Patient/{id}", node.base)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if reply.json()["name"].is_array() {
            read_back(&node.base, &[(id.clone(), version.clone(), family.clone())]).await;
        }
    }
    // Written after the copy: HAPI has it, the restored vault has not its identity.
    let reply = get(&format!("{}/Patient/{}", node.base, after.0)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert!(json["name"].is_null(), "{json}");
    assert_eq!(json["birthDate"], "1970", "{json}");
    // The restored node writes, seals and anchors as before.
    let again = write_patient(&node.base, &format!("{family}-restored")).await;
    settled(&node).await;
    read_back(&node.base, &[again]).await;
    node.stop();
}

/// The largest file under `dir` (sled's log), relative to `root`.
fn largest_file(root: &Path, dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let len = std::fs::metadata(&path).unwrap().len();
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((len, path));
                }
            }
        }
    }
    best.unwrap().1.strip_prefix(root).unwrap().to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", &text(from), &text(to)])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `fhirseal run` on `file` until it exits by itself: (code, what it printed). A node that
/// starts serving instead is killed and the test fails (the wait only keeps a failure from
/// hanging the suite).
fn run_until_refused(file: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirseal"))
        .args(["run", "--config", &text(file)])
        .env_remove("FHIRSEAL_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return (
                output.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            );
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fhirseal started on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_are_refused_at_start_and_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    let node = Node::start(&mut config, dir.path(), None).await;
    let family = unique("Damage");
    let mut written = Vec::new();
    for n in 0..4 {
        written.push(write_patient(&node.base, &format!("{family}{n}")).await);
    }
    node.stop();
    assert!(
        config.data_dir.join("stores.seal").is_file(),
        "a clean stop seals the stores"
    );

    // Untouched: it starts (and check finds everything sound).
    let intact = dir.path().join("intact");
    copy_dir(&config.data_dir, &intact);
    let mut copy = config.clone();
    copy.data_dir = intact.clone();
    let intact_run = dir.path().join("intact-run");
    std::fs::create_dir_all(&intact_run).unwrap();
    let file = config_file(&copy, &intact_run);
    let (code, printed) = fhirseal_once(&["check", "--config", &text(&file)]).await;
    assert_eq!(code, 0, "{printed}");
    for store in ["vault", "ledger", "governance"] {
        assert!(printed.contains(&format!("{store}: sound")), "{printed}");
    }
    let node = Node::start(&mut copy, &intact_run, None).await;
    settled(&node).await;
    read_back(&node.base, &written).await;
    node.stop();

    // A keystore without the node's keys: refused, before any key is made.
    let empty_keys = dir.path().join("no-keys");
    let mut keyless = copy.clone();
    keyless.seal.keys_dir = Some(empty_keys.clone());
    keyless.server.listen = ([127, 0, 0, 1], free_port()).into();
    let keyless_run = dir.path().join("keyless-run");
    std::fs::create_dir_all(&keyless_run).unwrap();
    let file = config_file(&keyless, &keyless_run);
    let (code, printed) = tokio::task::spawn_blocking(move || run_until_refused(&file))
        .await
        .unwrap();
    assert_ne!(code, 0, "{printed}");
    assert!(printed.contains("institution-rsa.pem"), "{printed}");
    assert!(!empty_keys.join("institution-rsa.pem").exists());

    for (store, store_dir) in [
        ("vault", "vault"),
        ("ledger", "ledger"),
        ("governance", "consortium/raft"),
    ] {
        for damage in ["flip", "truncate"] {
            let case = dir.path().join(format!("{store}-{damage}"));
            copy_dir(&config.data_dir, &case);
            let target = case.join(largest_file(&case, &case.join(store_dir)));
            let len = std::fs::metadata(&target).unwrap().len();
            if damage == "flip" {
                let mut bytes = std::fs::read(&target).unwrap();
                let at = bytes.len() / 2;
                for b in &mut bytes[at..at + 8] {
                    *b ^= 0x5a;
                }
                std::fs::write(&target, bytes).unwrap();
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
            let mut damaged = config.clone();
            damaged.data_dir = case.clone();
            damaged.server.listen = ([127, 0, 0, 1], free_port()).into();
            let run = dir.path().join(format!("{store}-{damage}-run"));
            std::fs::create_dir_all(&run).unwrap();
            let file = config_file(&damaged, &run);

            let (code, printed) = tokio::task::spawn_blocking({
                let file = file.clone();
                move || run_until_refused(&file)
            })
            .await
            .unwrap();
            assert_ne!(code, 0, "{store} {damage}: {printed}");
            assert!(
                printed.contains(&format!("the {store} store")) && printed.contains("damaged"),
                "{store} {damage}: {printed}"
            );
            // Refused again: the damage does not go away by starting twice.
            let (code, _) = tokio::task::spawn_blocking(move || run_until_refused(&file))
                .await
                .unwrap();
            assert_ne!(code, 0);

            let file = run.join("fhirseal.toml");
            let (code, printed) = fhirseal_once(&["check", "--config", &text(&file)]).await;
            assert_eq!(code, 1, "{store} {damage}: {printed}");
            assert!(
                printed.contains(&format!("{store}: DAMAGED")),
                "{store} {damage}: {printed}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_sealed_record_is_never_served_as_identity() {
    let sidecar = start_in_front_of_hapi().await;
    let family = unique("Altered");
    let (id, version, _) = write_patient(&sidecar.base, &family).await;
    let (other, _, other_family) = write_patient(&sidecar.base, &unique("Intact")).await;
    let (config, data) = sidecar.stop().await;

    // One ciphertext byte of the first patient's sealed record changed in the vault.
    {
        let db = sled::open(config.data_dir.join("vault")).unwrap();
        let resources = db.open_tree("resources").unwrap();
        let key = format!("Patient\0{id}\0{version}");
        let address = resources.get(key.as_bytes()).unwrap().unwrap();
        let records = db.open_tree("records").unwrap();
        let mut bytes = records.get(&address).unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        records.insert(&address, bytes).unwrap();
        db.flush().unwrap();
    }
    let sidecar = start_with_data(config.clone(), data).await;
    let reply = get(&format!("{}/Patient/{id}", sidecar.base)).await;
    let diagnostics = reply.assert_outcome(500);
    assert!(diagnostics.contains("integrity check"), "{diagnostics}");
    assert!(!reply.text().contains(&family), "{}", reply.text());
    // Its neighbour is served whole; the process still answers.
    let reply = get(&format!("{}/Patient/{other}", sidecar.base)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["name"][0]["family"], other_family.as_str());
    let (config, _data) = sidecar.stop().await;

    let run = tempfile::tempdir().unwrap();
    let file = config_file(&config, run.path());
    let (code, printed) = fhirseal(&["check", "--config", &text(&file)]).await;
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("vault: DAMAGED"), "{printed}");
    assert!(printed.contains("altered"), "{printed}");
}

/// A vault whose blind index an earlier build filed in another layout: identity searches wait
/// (503) until the node has refiled it from each sealed identity merged into the clinical part
/// the upstream holds, then answer as before, the parts only the upstream keeps included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_index_of_an_earlier_layout_is_refiled_at_start() {
    let sidecar = start_in_front_of_hapi().await;
    let family = unique("Refile");
    // The state stays in the clinical part upstream; the index files it all the same.
    let state = unique("State");
    let mut written = patient(&family);
    written["address"] =
        serde_json::json!([{"line": ["1 Elm St"], "city": "Boston", "state": state}]);
    let reply = post_json(&format!("{}/Patient", sidecar.base), &written).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let searches = [
        format!("Patient?family={family}"),
        format!("Patient?address={state}"),
        format!("Patient?address-city=bost&family:exact={family}"),
    ];
    let found = |reply: &Reply| {
        let json = reply.json();
        (
            json["total"].clone(),
            json["entry"][0]["resource"]["name"][0]["family"].clone(),
        )
    };
    for search in &searches {
        let reply = get(&format!("{}/{search}", sidecar.base)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            found(&reply),
            (1.into(), family.as_str().into()),
            "{search}"
        );
    }
    let (config, data) = sidecar.stop().await;

    // What an earlier build leaves: its own entries (none here) and no layout recorded.
    {
        // The stopped node's last tasks may hold the vault's lock for a moment.
        let mut attempts = 0;
        let vault = loop {
            match fhirseal_storage::Vault::open(&config.data_dir.join("vault")) {
                Ok(vault) => break vault,
                Err(e) if attempts < 50 && e.to_string().contains("lock") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        for (resource_type, id) in vault.indexed_resources().unwrap() {
            vault.refile(&resource_type, &id, &[]).unwrap();
        }
        vault.database().remove("blind-layout").unwrap();
        vault.flush().unwrap();
    }

    let sidecar = start_with_data(config, data).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for search in &searches {
        let reply = loop {
            let reply = get(&format!("{}/{search}", sidecar.base)).await;
            if reply.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                break reply;
            }
            assert!(
                reply.text().contains("refiles its blind index"),
                "{}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            found(&reply),
            (1.into(), family.as_str().into()),
            "{search}"
        );
    }
}
