//! A consortium of real `fhirseal consortium node` processes on loopback ports, founded and
//! joined through the CLI, each node in its own directory with its own keys.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fhirseal_consensus::governance::{Command as GovCommand, SignedCommand};
use fhirseal_sidecar::consortium::api::{Status, SubmitAnswer};
use fhirseal_sidecar::consortium::files::{Layout, MemberSecrets};
use fhirseal_sidecar::consortium::Client;

pub const CONSORTIUM: &str = "test-consortium";
/// The nodes' election timeout (lower bound), in milliseconds.
pub const ELECTION_TIMEOUT_MS: u64 = 500;

/// Multi-process clusters run one at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fhirseal")
}

/// A free loopback port (bound, then released for the node to take).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `fhirseal consortium ARGS`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("consortium")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// Runs `fhirseal consortium ARGS` and expects success; returns its output.
pub fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "fhirseal consortium {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// [`ok`] with the flags every test node is made with: small RSA keys (fast to make), the test
/// election timeout, frequent snapshots (so that catching up installs one).
fn ok_with(args: &[&str]) -> String {
    let timeout = ELECTION_TIMEOUT_MS.to_string();
    let mut all = args.to_vec();
    all.extend([
        "--rsa-bits",
        "2048",
        "--election-timeout-ms",
        &timeout,
        "--snapshot-every",
        "20",
    ]);
    ok(&all)
}

/// Runs `fhirseal consortium ARGS`, expects failure, and returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        !out.status.success(),
        "fhirseal consortium {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub struct Node {
    pub member: String,
    pub node_id: u64,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.member);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(bin())
            .args(["consortium", "node", "--dir", self.dir()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(term.success());
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "{} did not stop", self.member);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's status, through the CLI's JSON.
    pub fn status(&self) -> Status {
        serde_json::from_str(&ok(&["status", "--dir", self.dir(), "--json"])).unwrap()
    }

    /// The status, or `None` while the node does not answer.
    pub fn try_status(&self) -> Option<Status> {
        let out = cli(&["status", "--dir", self.dir(), "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn secrets(&self) -> MemberSecrets {
        let layout = Layout::new(&self.dir);
        MemberSecrets::load(&layout.keys(), &layout.keys()).unwrap()
    }

    pub fn node_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

pub struct Cluster {
    _root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub pin: String,
    pub desk: SocketAddr,
    root: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

impl Cluster {
    /// Founds a consortium of `n` nodes: the regulator (node 1) and `n - 1` institutions
    /// (`h2`, `h3`, …), of which the first `voters - 1` vote; waits until every node has
    /// applied every admission.
    pub fn found(n: u64, voters: u64) -> Self {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().to_owned();
        let reg_dir = path.join("regulator");
        let listen = free_port().to_string();
        let desk = free_port();
        let out = ok_with(&[
            "init",
            "--dir",
            reg_dir.to_str().unwrap(),
            "--consortium",
            CONSORTIUM,
            "--listen",
            &listen,
            "--join-listen",
            &desk.to_string(),
        ]);
        let pin = out
            .split("--pin ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        let mut cluster = Self {
            _root: root,
            nodes: vec![Node {
                member: "regulator".into(),
                node_id: 1,
                dir: reg_dir,
                child: None,
            }],
            pin,
            desk,
            root: path,
        };
        cluster.nodes[0].start();
        cluster.wait(&[0], "genesis", |s| s.consortium.is_some());
        for id in 2..=n {
            let i = cluster.join(id);
            let mut admit = vec![
                "admit",
                &cluster.nodes[i].member,
                "--dir",
                cluster.nodes[0].dir(),
            ];
            if id <= voters {
                admit.push("--voter");
            }
            let admit: Vec<String> = admit.iter().map(|s| (*s).to_owned()).collect();
            let admit: Vec<&str> = admit.iter().map(String::as_str).collect();
            ok(&admit);
        }
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        let members = cluster.nodes.len();
        cluster.wait(&all, "every admission", |s| {
            s.members.iter().filter(|m| m.status == "active").count() == members
                && s.raft.voters.len() == usize::try_from(voters).unwrap()
                && s.raft.learners.len() == members - usize::try_from(voters).unwrap()
        });
        cluster
    }

    /// An institution `h{id}` asks to join and starts its node; returns its index.
    pub fn join(&mut self, id: u64) -> usize {
        let member = format!("h{id}");
        let dir = self.root.join(&member);
        let listen = free_port().to_string();
        ok_with(&[
            "join",
            &format!("https://{}", self.desk),
            "--pin",
            &self.pin,
            "--dir",
            dir.to_str().unwrap(),
            "--member",
            &member,
            "--node-id",
            &id.to_string(),
            "--listen",
            &listen,
        ]);
        let mut node = Node {
            member,
            node_id: id,
            dir,
            child: None,
        };
        node.start();
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn node(&self, member: &str) -> &Node {
        self.nodes.iter().find(|n| n.member == member).unwrap()
    }

    pub fn index(&self, member: &str) -> usize {
        self.nodes.iter().position(|n| n.member == member).unwrap()
    }

    pub fn start(&mut self, i: usize) {
        self.nodes[i].start();
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    /// Polls the nodes `which` until `done` holds for each (30 s at most).
    pub fn wait(&self, which: &[usize], what: &str, done: impl Fn(&Status) -> bool) -> Vec<Status> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses: Vec<Option<Status>> =
                which.iter().map(|i| self.nodes[*i].try_status()).collect();
            if statuses.iter().all(|s| s.as_ref().is_some_and(&done)) {
                return statuses.into_iter().map(Option::unwrap).collect();
            }
            if Instant::now() > deadline {
                for (i, s) in which.iter().zip(&statuses) {
                    eprintln!(
                        "--- {}: {}\n{}",
                        self.nodes[*i].member,
                        s.as_ref()
                            .map_or_else(|| "no answer".to_owned(), Status::render),
                        tail(&self.nodes[*i].node_log(), 30)
                    );
                }
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader every running node agrees on.
    pub fn leader(&self) -> u64 {
        let running = self.running();
        let statuses = self.wait(&running, "one leader", |s| s.raft.leader.is_some());
        let leader = statuses[0].raft.leader.unwrap();
        self.wait(&running, "the same leader", |s| {
            s.raft.leader == Some(leader)
        });
        leader
    }

    /// A command signed by `signer` with the next sequence number its node knows.
    pub fn sign(&self, signer: &str, command: GovCommand) -> SignedCommand {
        let node = self.node(signer);
        let last = node.status().member(signer).unwrap().last_sequence;
        SignedCommand::sign(
            CONSORTIUM,
            signer,
            last + 1,
            command,
            &node.secrets().signing,
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Submits `command` through the node of `dir` (any member's node relays any signed command).
pub fn submit(dir: &Path, command: &SignedCommand) -> SubmitAnswer {
    runtime().block_on(async {
        let mut client = Client::open(dir).unwrap();
        client.submit(command).await.unwrap()
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The p-th percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Commit latency at the leader: `rounds` stake changes, each signed by the regulator and sent
/// through the regulator's node (the leader here) over one connection; printed, not asserted.
pub fn measure_commit_latency(cluster: &Cluster, rounds: u64, label: &str) {
    let reg = cluster.node("regulator");
    let key = reg.secrets().signing;
    let first = reg.status().member("regulator").unwrap().last_sequence + 1;
    let mut samples = runtime().block_on(async {
        let mut client = Client::open(&reg.dir).unwrap();
        let mut samples = Vec::new();
        for i in 0..rounds {
            let command = SignedCommand::sign(
                CONSORTIUM,
                "regulator",
                first + i,
                GovCommand::SetStake {
                    member: "h2".into(),
                    stake: 10_000 + i,
                },
                &key,
            );
            let started = Instant::now();
            let answer = client.submit(&command).await.unwrap();
            samples.push(started.elapsed());
            assert_eq!(answer.outcome, "accepted", "{answer:?}");
        }
        samples
    });
    samples.sort();
    eprintln!(
        "FIGURE {label}: commit latency of a governance command over {rounds}: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().unwrap()
    );
}
