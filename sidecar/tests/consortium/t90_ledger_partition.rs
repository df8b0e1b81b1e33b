//! A network partition of the shared chain's four delegates, with Linux network namespaces: a
//! side without a quorum of delegates finalizes nothing, the side with one finalizes what waits
//! there, and once the network is whole again every member holds the same chain, with every
//! batch submitted anchored exactly once.
//!
//! The nodes run as in [`crate::t40_partition`]: each a real `fhirseal run` process in a network
//! namespace of its own, on a switch of two bridges joined by a trunk ([`crate::netns`]); four
//! members (the regulator, `h2`, `h3`, `h4`), all voters, are all four delegates of the chain
//! (K = 4, `consortium init`'s default; f = 1, a quorum is 3). The nodes have no FHIR server
//! behind them, so the transactions come the way a member's anchorer sends them: the test signs
//! an `AnchorBatch` with the member's signing key and posts it to the member's own node,
//! `POST /ledger/submit` on its consortium listener, over mutual TLS with the member's
//! certificate. The chains are read through each node's ledger API (`/ledger/status`,
//! `/ledger/blocks/{height}`, with the auditor's API key the node made at its first start). Both
//! are `curl` run with `ip netns exec` in the member's namespace: nothing is bound or connected
//! in the test's own namespace, which has no route to the nodes.
//!
//! The scenario:
//!
//! 1. all connected: a batch submitted at `h2` and one at `h3` are finalized, and all four hold
//!    the same chain;
//! 2. split 2|2 (the regulator and `h2` | `h3` and `h4`): a batch is submitted at `h2`, `h3` and
//!    `h4`; a few seconds later no node's chain has moved;
//! 3. `h3` moves to the other side, 3|1: the regulator, `h2` and `h3` finalize the batches that
//!    wait at `h2` and `h3` (both submitted during the 2|2 split), and `h4` does not move;
//! 4. the trunk comes back up: `h4` catches up, its own batch is finalized, all four hold the
//!    same chain and every batch submitted is in it exactly once.
//!
//! Throughout, no two nodes ever hold different blocks at one height. Prints, as `FIGURE` lines,
//! the time to finality when connected and after each healing, and `h4`'s catch-up time. Needs
//! root and iproute2 (and `curl`); without them it prints one `skipped: …` line and passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirseal_consensus::{AnchorBatch, AnchorEntry, BatchId, SigningKey, Transaction};
use fhirseal_sidecar::consortium::files::{hex, Layout};
use serde_json::Value;

use crate::netns::{exec_in, Namespaces};
use crate::support::{serial, Cluster, Node};

const MEMBERS: u64 = 4;
/// The most any wait for finality or a catch-up may take: a bound a healthy consortium meets
/// many times over, not a speed claim.
const BOUND: Duration = Duration::from_secs(60);
/// How long a side without a quorum is watched not finalizing.
const QUIET: Duration = Duration::from_secs(5);
/// The name in every node's certificate.
const CERTIFICATE_NAME: &str = "fhirseal-node";

#[test]
fn a_split_without_a_quorum_finalizes_nothing_and_every_member_holds_one_chain_after_healing() {
    let _serial = serial();
    if let Err(e) = Command::new("curl").arg("--version").output() {
        eprintln!("skipped: the ledger partition test needs curl ({e})");
        return;
    }
    let Some(net) = Namespaces::create(MEMBERS) else {
        return;
    };
    let net = Arc::new(net);
    let started = Instant::now();
    let cluster = Cluster::found_on(MEMBERS, MEMBERS, net.clone());
    let mut chains = Chains::new(cluster.nodes.iter().map(Member::of).collect());
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let [reg, h2, h3, h4] = [0, 1, 2, 3];
    assert_eq!(chains.members[h4].name, "h4");

    // Every node follows the four delegates, and the chain stands still.
    chains.until(&all, "four delegates everywhere", |statuses, held| {
        statuses
            .iter()
            .all(|s| s["delegates"].as_array().map_or(0, Vec::len) == 4)
            && same(held)
    });
    let founded = chains.held[0].len();
    eprintln!(
        "FIGURE ledger partition: {MEMBERS} delegates founded in their namespaces in {:?} ({founded} blocks)",
        started.elapsed()
    );
    let mut submitted = Vec::new();

    // 1. All connected: batches at two members are finalized, one chain everywhere.
    let first = [chains.members[h2].submit(), chains.members[h3].submit()];
    submitted.extend(first.clone());
    let took = chains.until(&all, "the first two batches everywhere", |_, held| {
        same(held) && first.iter().all(|b| count(held[0], b) == 1)
    });
    eprintln!(
        "FIGURE ledger partition: all connected, batches submitted at h2 and h3 are final at all four in {took:?}"
    );

    // 2. Split 2|2: the regulator and h2 | h3 and h4. Neither side finalizes (and, as at every
    // read, no two nodes hold different blocks at one height: `Chains::read_one`).
    let before = chains.held[0].len();
    net.move_to_sw1(&[cluster.nodes[h3].node_id, cluster.nodes[h4].node_id]);
    net.split();
    let split = [
        chains.members[h2].submit(),
        chains.members[h3].submit(),
        chains.members[h4].submit(),
    ];
    submitted.extend(split.clone());
    std::thread::sleep(QUIET);
    let statuses = chains.read(&all);
    for (i, s) in all.iter().zip(&statuses) {
        assert_eq!(
            chains.held[*i].len(),
            before,
            "{}'s chain moved during the 2|2 split: {s}",
            chains.members[*i].name
        );
        eprintln!(
            "FIGURE ledger partition: 2|2 split, {QUIET:?} after the submissions {} holds {before} blocks \
             (deciding height {}, round {}, {} transaction(s) waiting)",
            chains.members[*i].name, s["blocks"], s["round"], s["waitingTransactions"]
        );
    }

    // 3. h3 moves over: 3|1. The three finalize what waits at h2 and h3; h4 does not move.
    let three = [reg, h2, h3];
    net.move_to_sw0(&[cluster.nodes[h3].node_id]);
    let waiting = [split[0].clone(), split[1].clone()];
    let took = chains.until(&three, "the three to finalize what waits", |_, held| {
        same(held) && waiting.iter().all(|b| count(held[0], b) == 1)
    });
    eprintln!(
        "FIGURE ledger partition: 3|1, the batches submitted at h2 and h3 during the 2|2 split are final \
         at the three {took:?} after h3 moved over"
    );
    let majority = chains.held[reg].clone();
    assert!(majority.len() > before);
    assert!(
        majority.iter().all(|b| !b.anchors.contains(&split[2])),
        "h4's batch, held by h4 alone, was finalized without it"
    );
    // The one stays where it was (its node answers: it is only cut off).
    let statuses = chains.read(&[h4]);
    assert_eq!(
        chains.held[h4].len(),
        before,
        "h4 alone moved: {}",
        statuses[0]
    );
    eprintln!(
        "FIGURE ledger partition: 3|1, the three hold {} blocks, h4 alone still {before} (deciding height {}, round {})",
        majority.len(),
        statuses[0]["blocks"],
        statuses[0]["round"]
    );

    // 4. Healing: h4 catches up, its batch is finalized, one chain everywhere.
    let mended = Instant::now();
    net.mend();
    let caught_up = chains.until(&[h4], "h4 to catch up", |_, held| {
        held[0].len() >= majority.len()
    });
    chains.until(&all, "one chain with h4's batch everywhere", |_, held| {
        same(held) && count(held[0], &split[2]) == 1
    });
    let took = mended.elapsed();
    eprintln!(
        "FIGURE ledger partition: healed, h4 holds the three's {} blocks {caught_up:?} after, its own batch \
         is final at all four {took:?} after",
        majority.len()
    );
    let chain = chains.held[0].clone();
    assert_eq!(chain[..majority.len()], majority[..]);
    for batch in &submitted {
        assert_eq!(
            count(&chain, batch),
            1,
            "{}'s batch {} is not in the chain exactly once",
            batch.institution,
            batch.id
        );
    }
    let anchored: usize = chain.iter().map(|b| b.anchors.len()).sum();
    assert_eq!(
        anchored,
        submitted.len(),
        "batches nobody submitted: {chain:?}"
    );
    // A batch taken at one node waits for that node's turn to propose: the other delegates'
    // turns finalize blocks without transactions.
    let empty = chain[founded..]
        .iter()
        .filter(|b| b.transactions == 0)
        .count();
    eprintln!(
        "FIGURE ledger partition: {} batches anchored exactly once in {} blocks after the founding's {founded} \
         ({empty} of them empty); the whole test took {:?}",
        submitted.len(),
        chain.len() - founded,
        started.elapsed()
    );

    drop(cluster);
    Arc::try_unwrap(net).unwrap().remove();
}

/// One member as the test reaches it, from its node's namespace.
struct Member {
    name: String,
    netns: String,
    /// `http://ADDRESS/ledger` of the node's FHIR listener.
    ledger: String,
    /// The auditor's API key the node made at its first start.
    auditor: String,
    /// The node's keystore: the member's TLS certificate and key.
    keys: PathBuf,
    /// The node's consortium listener.
    listen: SocketAddr,
    signing: SigningKey,
    /// Batches signed so far.
    batches: u8,
    /// The node's log.
    log: PathBuf,
}

impl Member {
    fn of(node: &Node) -> Self {
        let keys = Layout::new(&node.dir).keys();
        let file = std::fs::read_to_string(keys.join("api-keys.toml")).unwrap();
        let table: toml::Table = file.parse().unwrap();
        let auditor = table["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"].as_str() == Some("auditor"))
            .and_then(|k| k["key"].as_str())
            .unwrap()
            .to_owned();
        let fhir = node.fhir_base();
        Self {
            name: node.member.clone(),
            netns: node.netns.clone().unwrap(),
            ledger: format!("{}/ledger", fhir.strip_suffix("/fhir").unwrap()),
            auditor,
            keys,
            listen: node.listen,
            signing: node.secrets().signing,
            batches: 0,
            log: node.dir.join("node.log"),
        }
    }

    /// `curl ARGS` in the member's namespace: the HTTP status and body, or `None` when there was
    /// no answer.
    fn curl(&self, args: &[&str]) -> Option<(u16, String)> {
        let out: Output = exec_in(&self.netns, "curl")
            .args(["--silent", "--show-error", "--max-time", "15"])
            .args(["--write-out", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        Some((status.parse().unwrap(), body.to_owned()))
    }

    /// The node's ledger API answer at `path`, or `None` when the node does not answer.
    fn get(&self, path: &str) -> Option<Value> {
        let key = format!("X-Api-Key: {}", self.auditor);
        let url = format!("{}/{path}", self.ledger);
        let (status, body) = self.curl(&["--header", &key, &url])?;
        assert_eq!(status, 200, "{url}: {body}");
        Some(serde_json::from_str(&body).unwrap())
    }

    /// Signs the member's next batch (two anchors of resources written nowhere: the chain checks
    /// the signature and the institution's key, not the FHIR server) and submits it to the
    /// member's node as its anchorer would: `POST /ledger/submit` with the member's certificate,
    /// checking the node's. Asserts the node queued it.
    fn submit(&mut self) -> Batch {
        self.batches += 1;
        let n = self.batches;
        let entries = (0..2u8)
            .map(|k| AnchorEntry {
                institution: self.name.clone(),
                resource_type: "Patient".into(),
                logical_id: format!("t90-{}-{n}-{k}", self.name),
                version_id: "1".into(),
                fingerprint: [n; 32],
                sealed_address: [k; 32],
                clinical_hash: [n ^ k; 32],
            })
            .collect();
        let mut id = [0u8; 16];
        id[..self.name.len()].copy_from_slice(self.name.as_bytes());
        id[15] = n;
        let batch =
            AnchorBatch::sign(BatchId(id), self.name.clone(), entries, &self.signing).unwrap();
        let transaction = Transaction::Anchor(batch).to_bytes();
        // The body: a list of one transaction (`sidecar/src/ledger/wire.rs`: a u32 count, then
        // each item after its u32 length, big-endian).
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend(u32::try_from(transaction.len()).unwrap().to_be_bytes());
        body.extend(&transaction);
        let file = self.keys.with_file_name(format!("submit-{n}.bin"));
        std::fs::write(&file, body).unwrap();
        let cert = self.keys.join("tls.cert.pem");
        let key = self.keys.join("tls.key.pem");
        let resolve = format!(
            "{CERTIFICATE_NAME}:{}:{}",
            self.listen.port(),
            self.listen.ip()
        );
        let url = format!(
            "https://{CERTIFICATE_NAME}:{}/ledger/submit",
            self.listen.port()
        );
        let data = format!("@{}", file.display());
        let (status, answer) = self
            .curl(&[
                "--http2",
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                // The node's certificate is the member's own: the only one trusted.
                "--cacert",
                cert.to_str().unwrap(),
                "--resolve",
                &resolve,
                "--header",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &data,
                &url,
            ])
            .unwrap_or_else(|| panic!("{}'s node did not answer its submission", self.name));
        assert_eq!(status, 200, "{}: {answer}", self.name);
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            answer,
            serde_json::json!([{"submitted": "queued"}]),
            "{}",
            self.name
        );
        Batch {
            institution: self.name.clone(),
            id: hex(&id),
        }
    }
}

/// A batch, as the ledger API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    institution: String,
    /// Its id (hex).
    id: String,
}

/// A block, as the ledger API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    hash: String,
    transactions: u64,
    anchors: Vec<Batch>,
}

/// The blocks each member's node holds (read once each: a final block never changes), and every
/// block seen at each height at any node, which must be one.
struct Chains {
    members: Vec<Member>,
    held: Vec<Vec<Block>>,
    seen: BTreeMap<usize, (String, String)>,
}

impl Chains {
    fn new(members: Vec<Member>) -> Self {
        Self {
            held: vec![Vec::new(); members.len()],
            members,
            seen: BTreeMap::new(),
        }
    }

    /// Reads node `i`'s status and the blocks it holds that were not read yet; `None` when it
    /// does not answer. Panics if a block differs from one another node holds at its height.
    fn read_one(&mut self, i: usize) -> Option<Value> {
        let member = &self.members[i];
        let status = member.get("status")?;
        let blocks = usize::try_from(status["blocks"].as_u64().unwrap()).unwrap();
        while self.held[i].len() < blocks {
            let height = self.held[i].len();
            let json = member.get(&format!("blocks/{height}"))?;
            let block = Block {
                hash: json["hash"].as_str().unwrap().to_owned(),
                transactions: json["transactionCount"].as_u64().unwrap(),
                anchors: json["transactions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["kind"] == "anchor")
                    .map(|t| Batch {
                        institution: t["institution"].as_str().unwrap().to_owned(),
                        id: t["batch"].as_str().unwrap().to_owned(),
                    })
                    .collect(),
            };
            let first = self
                .seen
                .entry(height)
                .or_insert_with(|| (member.name.clone(), block.hash.clone()));
            assert_eq!(
                first.1, block.hash,
                "two blocks at height {height}: {} holds {}, {} holds {}",
                first.0, first.1, member.name, block.hash
            );
            self.held[i].push(block);
        }
        Some(status)
    }

    /// [`Chains::read_one`] for each of `which`, until each has answered (`BOUND` at most).
    fn read(&mut self, which: &[usize]) -> Vec<Value> {
        let since = Instant::now();
        which
            .iter()
            .map(|i| loop {
                if let Some(status) = self.read_one(*i) {
                    break status;
                }
                assert!(
                    since.elapsed() < BOUND,
                    "{}'s node does not answer",
                    self.members[*i].name
                );
                std::thread::sleep(Duration::from_millis(100));
            })
            .collect()
    }

    /// Reads the nodes `which` until `done` holds for their statuses and chains (`BOUND` at
    /// most); returns how long that took.
    fn until(
        &mut self,
        which: &[usize],
        what: &str,
        done: impl Fn(&[Value], &[&[Block]]) -> bool,
    ) -> Duration {
        let since = Instant::now();
        loop {
            let statuses = self.read(which);
            let held: Vec<&[Block]> = which.iter().map(|i| self.held[*i].as_slice()).collect();
            if done(&statuses, &held) {
                return since.elapsed();
            }
            if since.elapsed() > BOUND {
                for (i, s) in which.iter().zip(&statuses) {
                    let log = std::fs::read_to_string(&self.members[*i].log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!(
                        "--- {}: {s}\n{:?}\n{}",
                        self.members[*i].name,
                        self.held[*i],
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the chains are one: the same blocks, as many.
fn same(held: &[&[Block]]) -> bool {
    held.iter().all(|c| *c == held[0])
}

/// How many times `batch` is in `chain`.
fn count(chain: &[Block], batch: &Batch) -> usize {
    chain
        .iter()
        .flat_map(|b| &b.anchors)
        .filter(|a| *a == batch)
        .count()
}
