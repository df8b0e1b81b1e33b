//! The DPoS election among seven real nodes: `deploy/local-consortium.sh start 7 --delegates 4
//! --epoch-blocks 20 --max-terms 1` on an idle consortium (no FHIR server behind the nodes: the
//! election needs none, and blocks come every `FHIRSEAL_IDLE_BLOCK_MS`). At least five ledger
//! epochs close at every member with the same seeds and the same delegates elected; the delegate
//! set changes from epoch to epoch; ballots on the chain name no voter; one delegate restarted
//! with `FHIRSEAL_TEST_DOUBLE_SIGN` sends a conflicting prevote beside each of its prevotes, the
//! others report it on the chain, and at the next close it is slashed and tombstoned — once — and never elected
//! again, while no other member is slashed or tombstoned. Then a member rotates its keys and
//! keeps voting and contributing to the beacon with the new ones.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::{ok, runtime, serial};
use crate::t30_script::{consortium_json, free_base, script, script_with, StopOnDrop};
use crate::t70_institutions::send;

const MEMBERS: usize = 7;
const EPOCH_BLOCKS: u64 = 20;

/// `member`'s configuration file.
fn config_of(json: &Value, member: &str) -> String {
    json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == member)
        .unwrap()["config"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `member`'s ledger status (its auditor's key).
async fn status(json: &Value, member: &str) -> Value {
    get(json, member, "status").await
}

async fn get(json: &Value, member: &str, path: &str) -> Value {
    let m = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == member)
        .unwrap();
    let url = format!("{}/{path}", m["ledger_api"].as_str().unwrap());
    let key = m["api_keys"]["auditor"].as_str().unwrap();
    let (code, body) = send(Method::GET, &url, key, None).await;
    assert!(code.is_success(), "{url}: {code} {body}");
    body
}

/// Milliseconds since midnight of an RFC 3339 instant as the block JSON writes it
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn ms_of_day(instant: &str) -> u64 {
    let clock = &instant[11..23];
    let h: u64 = clock[0..2].parse().unwrap();
    let m: u64 = clock[3..5].parse().unwrap();
    let sec: u64 = clock[6..8].parse().unwrap();
    let ms: u64 = clock[9..12].parse().unwrap();
    ((h * 60 + m) * 60 + sec) * 1000 + ms
}

/// The epochs closed at `member`, oldest first, by epoch.
async fn closed(json: &Value, member: &str) -> Vec<Value> {
    let mut closed = status(json, member).await["election"]["closed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    closed.reverse();
    closed
}

/// Polls until every member has closed ledger epoch `epoch`.
async fn until_closed(json: &Value, epoch: u64, names: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut behind = Vec::new();
        for name in names {
            let last = closed(json, name)
                .await
                .last()
                .and_then(|c| c["epoch"].as_u64());
            if last.is_none_or(|e| e < epoch) {
                behind.push((name.clone(), last));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ledger epoch {epoch} did not close everywhere: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn seven_nodes_elect_their_delegates_every_epoch_and_eject_a_double_signer() {
    let _serial = serial();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let _stop = StopOnDrop(dir.clone());
    let port = free_base(MEMBERS as u16).to_string();
    let fast = [("FHIRSEAL_IDLE_BLOCK_MS", "200")];
    script_with(
        &dir,
        &[
            "start",
            "7",
            "--delegates",
            "4",
            "--epoch-blocks",
            &EPOCH_BLOCKS.to_string(),
            "--max-terms",
            "1",
            "--port",
            &port,
        ],
        &fast,
    );
    eprintln!("FIGURE seven members started in {:?}", started.elapsed());
    let json = consortium_json(&dir);
    let names: Vec<String> = (1..=MEMBERS).map(|i| format!("h{i}")).collect();

    // Five epochs close everywhere, with the same decisions.
    let elections = Instant::now();
    runtime().block_on(until_closed(&json, 4, &names, Duration::from_secs(240)));
    eprintln!(
        "FIGURE five ledger epochs of {EPOCH_BLOCKS} blocks closed at all seven in {:?}",
        elections.elapsed()
    );
    let decided = runtime().block_on(async {
        let reference = closed(&json, "h1").await;
        for name in &names[1..] {
            let theirs = closed(&json, name).await;
            for c in &theirs {
                if let Some(ours) = reference.iter().find(|r| r["epoch"] == c["epoch"]) {
                    assert_eq!(
                        (&ours["seed"], &ours["elected"]),
                        (&c["seed"], &c["elected"]),
                        "{name} decided epoch {} otherwise",
                        c["epoch"]
                    );
                }
            }
        }
        reference
    });
    let sets: Vec<Vec<String>> = decided
        .iter()
        .map(|c| {
            let mut set: Vec<String> = c["elected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            set.sort();
            set
        })
        .collect();
    // The founders serve on while nobody can stand: the stakes are given once every member has
    // joined, after the first epoch's seats were taken. Every later election fills K seats, and
    // nobody here misbehaves: no penalty.
    assert!(
        sets[1..].iter().all(|s| s.len() == 4),
        "{sets:?} {decided:?}"
    );
    let penalties: Vec<&Value> = decided
        .iter()
        .flat_map(|c| c["changes"].as_array().unwrap())
        .filter(|x| x.get("reputation").is_none())
        .collect();
    assert!(
        penalties.is_empty(),
        "honest members penalized: {penalties:?}"
    );
    eprintln!("FIGURE elected {sets:?}");
    assert!(
        sets.windows(2).all(|w| w[0] != w[1]),
        "the delegate set did not change between epochs: {sets:?}"
    );

    // Ballots on the chain: each names a candidate and an epoch, never a voter. And the block
    // cadence across epoch changes (new delegates, handed to the engine) beside within epochs.
    runtime().block_on(async {
        let blocks = status(&json, "h2").await["blocks"].as_u64().unwrap();
        let mut ballots = 0;
        let mut times = Vec::new();
        for height in 1..blocks.min(5 * EPOCH_BLOCKS + 1) {
            let block = get(&json, "h2", &format!("blocks/{height}")).await;
            times.push((height, ms_of_day(block["time"].as_str().unwrap())));
            for tx in block["transactions"].as_array().unwrap() {
                if tx["kind"] == "ballot" {
                    ballots += 1;
                    assert!(tx.get("institution").is_none(), "{tx}");
                    assert!(tx.get("signer").is_none(), "{tx}");
                    assert!(tx["candidate"].is_string() && tx["keyImage"].is_string());
                }
            }
        }
        assert!(ballots >= MEMBERS, "{ballots} ballots in the first epochs");
        let (mut change, mut steady): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        for pair in times.windows(2) {
            let ((_, a), (height, b)) = (pair[0], pair[1]);
            let interval = (b + 86_400_000 - a) % 86_400_000;
            // The first block of a ledger epoch follows the close that elected its delegates'
            // epoch and is the first under a new set.
            if height % EPOCH_BLOCKS == 1 {
                change.push(interval);
            } else {
                steady.push(interval);
            }
        }
        change.sort_unstable();
        steady.sort_unstable();
        let pct = |v: &[u64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        eprintln!(
            "FIGURE block interval across an epoch change p50 {} ms p99 {} ms ({} changes), within epochs p50 {} ms p99 {} ms ({} blocks)",
            pct(&change, 50),
            pct(&change, 99),
            change.len(),
            pct(&steady, 50),
            pct(&steady, 99),
            steady.len()
        );
    });

    // h3 double signs once it is a delegate again, from the height the chain has reached.
    let from = runtime().block_on(status(&json, "h3"))["blocks"]
        .as_u64()
        .unwrap();
    script(&dir, &["kill", "h3"]);
    let from = from.to_string();
    script_with(
        &dir,
        &["start-member", "h3"],
        &[fast[0], ("FHIRSEAL_TEST_DOUBLE_SIGN", from.as_str())],
    );
    let ejected = Instant::now();
    let others: Vec<String> = names.iter().filter(|n| *n != "h3").cloned().collect();
    let changes = runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let standing = &status(&json, "h1").await["election"]["standings"]["h3"];
            if standing["tombstoned"] == true {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "h3 was never tombstoned: {standing}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Two more epochs close, without h3 among the elected.
        let now = closed(&json, "h1").await.last().unwrap()["epoch"]
            .as_u64()
            .unwrap();
        until_closed(&json, now + 2, &others, Duration::from_secs(180)).await;
        closed(&json, "h1").await
    });
    eprintln!(
        "FIGURE the double signer tombstoned {:?} after its restart",
        ejected.elapsed()
    );
    let tombstoned_at = changes
        .iter()
        .position(|c| {
            c["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["tombstoned"] == "h3")
        })
        .expect("the tombstone is among the last closes");
    for c in &changes[tombstoned_at + 1..] {
        assert!(
            !c["elected"].as_array().unwrap().iter().any(|m| m == "h3"),
            "h3 elected after its tombstone: {c}"
        );
    }
    let penalties: Vec<&Value> = changes
        .iter()
        .flat_map(|c| c["changes"].as_array().unwrap())
        .filter(|x| x.get("tombstoned").is_some() || x.get("slashed").is_some())
        .collect();
    assert_eq!(
        penalties.iter().filter(|x| x["tombstoned"] == "h3").count(),
        1,
        "{penalties:?}"
    );
    assert!(
        penalties
            .iter()
            .all(|x| x["tombstoned"] == "h3" || x["slashed"] == "h3"),
        "an honest member was penalized: {penalties:?}"
    );
    // `consortium status` shows the standing as the chain made it, at any member.
    let h2_config = config_of(&json, "h2");
    let shown: Value =
        serde_json::from_str(&ok(&["status", "--config", &h2_config, "--json"])).unwrap();
    let members = shown["standing"]["members"].as_array().unwrap();
    assert_eq!(members.len(), MEMBERS, "{shown}");
    assert!(
        members
            .iter()
            .any(|m| m["member"] == "h3" && m["tombstoned"] == true && m["stake"] == 50),
        "{shown}"
    );
    assert!(
        shown["standing"]["last_closed"]["elected"].is_array(),
        "{shown}"
    );
    // The evidence is on the chain.
    runtime().block_on(async {
        let blocks = status(&json, "h1").await["blocks"].as_u64().unwrap();
        let mut found = false;
        for height in (1..blocks).rev().take(8 * EPOCH_BLOCKS as usize) {
            let block = get(&json, "h1", &format!("blocks/{height}")).await;
            found |= block["transactions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|tx| tx["kind"] == "evidence");
            if found {
                break;
            }
        }
        assert!(found, "no evidence transaction on the chain");
    });

    // h5 rotates its keys: its node takes the new vote and beacon keys, and its ballots and
    // beacon contributions keep counting (no jail, every seated member's ballot counted).
    let h5_config = config_of(&json, "h5");
    ok(&["rotate", "--config", &h5_config]);
    let after = runtime().block_on(async {
        let now = closed(&json, "h1").await.last().unwrap()["epoch"]
            .as_u64()
            .unwrap();
        until_closed(&json, now + 3, &others, Duration::from_secs(180)).await;
        let all = closed(&json, "h1").await;
        all.into_iter()
            .filter(|c| c["epoch"].as_u64().unwrap() >= now + 2)
            .collect::<Vec<_>>()
    });
    for c in &after {
        assert!(
            !c["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["jailed"] == "h5"),
            "h5 jailed after rotating its keys: {c}"
        );
        let votes: u64 = c["votes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            votes, MEMBERS as u64,
            "a ballot was lost after the rotation: {c}"
        );
    }
    // A stopped member's chain verifies offline: `ledger verify` folds the elections again to
    // know each height's delegates.
    script(&dir, &["kill", "h7"]);
    let h7_config = config_of(&json, "h7");
    let verified = std::process::Command::new(crate::support::bin())
        .args(["ledger", "verify", "--config", &h7_config])
        .env_remove("FHIRSEAL_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(verified.status.success(), "ledger verify at h7: {text}");
    eprintln!(
        "FIGURE the whole election test took {:?}",
        started.elapsed()
    );
}
