//! A consortium of real `fhirseal run` nodes (no FHIR server behind them: their governance is
//! what these tests look at), founded and joined through the CLI, each node in its own data
//! directory with its own keystore: on loopback ports of this network namespace
//! ([`Loopback`]), or each in a network namespace of its own ([`crate::netns::Namespaces`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fhirseal_consensus::governance::{Command as GovCommand, SignedCommand};
use fhirseal_sidecar::consortium::api::{Status, SubmitAnswer};
use fhirseal_sidecar::consortium::cli::{command_window, wall_clock};
use fhirseal_sidecar::consortium::files::{parse_fingerprint, Layout, MemberSecrets};
use fhirseal_sidecar::consortium::transport::Channel;
use fhirseal_sidecar::consortium::trust::{Identity, Peer, Trust};
use fhirseal_sidecar::consortium::Client;

pub const CONSORTIUM: &str = "test-consortium";
/// The nodes' election timeout (lower bound), in milliseconds.
pub const ELECTION_TIMEOUT_MS: u64 = 500;

/// Multi-process clusters run one at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test run's two HAPI FHIR servers (`FHIRSEAL_TEST_HAPI`, `FHIRSEAL_TEST_HAPI_REFERENCE`,
/// as `deploy/test.sh` sets them); without them, says the test is skipped.
pub fn two_hapis() -> Option<(String, String)> {
    match (
        std::env::var("FHIRSEAL_TEST_HAPI"),
        std::env::var("FHIRSEAL_TEST_HAPI_REFERENCE"),
    ) {
        (Ok(first), Ok(second)) => Some((first, second)),
        _ => {
            eprintln!("skipped: FHIRSEAL_TEST_HAPI and FHIRSEAL_TEST_HAPI_REFERENCE are not set");
            None
        }
    }
}

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fhirseal")
}

/// A free loopback port for a node to take ([`crate::ports`]).
pub fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()))
}

/// Where a node runs: in the network namespace `netns` (this process's if `None`), listening on
/// `listen`.
#[derive(Debug, Clone)]
pub struct Place {
    pub netns: Option<String>,
    pub listen: SocketAddr,
}

/// Where the nodes of a cluster run.
pub trait Placement: Send + Sync {
    /// The place of node `id` (the regulator's is 1, `h{id}`'s is `id`).
    fn node(&self, id: u64) -> Place;
    /// Where the regulator's join desk listens (in node 1's namespace).
    fn desk(&self) -> SocketAddr;
}

/// Free loopback ports in this process's network namespace.
#[derive(Debug)]
pub struct Loopback;

impl Placement for Loopback {
    fn node(&self, _id: u64) -> Place {
        Place {
            netns: None,
            listen: free_port(),
        }
    }

    fn desk(&self) -> SocketAddr {
        free_port()
    }
}

/// `fhirseal`, run in the network namespace `netns` through `ip netns exec` (which execs it,
/// so the child is the `fhirseal` process itself), or here.
fn fhirseal(netns: Option<&str>) -> Command {
    let mut command = match netns {
        Some(ns) => crate::netns::exec_in(ns, bin()),
        None => Command::new(bin()),
    };
    command
        .env("RUST_BACKTRACE", "0")
        .env_remove("FHIRSEAL_CONFIG");
    command
}

/// Runs `fhirseal consortium ARGS` in `netns`.
pub fn cli_in(netns: Option<&str>, args: &[&str]) -> Output {
    fhirseal(netns)
        .arg("consortium")
        .args(args)
        .output()
        .unwrap()
}

/// Runs `fhirseal consortium ARGS`.
pub fn cli(args: &[&str]) -> Output {
    cli_in(None, args)
}

/// Runs `fhirseal consortium ARGS` in `netns` and expects success; returns its output.
pub fn ok_in(netns: Option<&str>, args: &[&str]) -> String {
    let out = cli_in(netns, args);
    assert!(
        out.status.success(),
        "fhirseal consortium {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `fhirseal consortium ARGS` and expects success; returns its output.
pub fn ok(args: &[&str]) -> String {
    ok_in(None, args)
}

/// [`ok_in`] with the flag every test node is made with: small RSA keys (fast to make). (The
/// nodes' Raft timing is set when they start: [`Node::start`].)
fn ok_with(netns: Option<&str>, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--rsa-bits", "2048"]);
    ok_in(netns, &all)
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
    /// The network namespace it and its CLI run in (`None`: this process's).
    pub netns: Option<String>,
    /// SHA-256 of the certificate it was made with (hex), as `init` or `join` printed it.
    pub certificate: String,
    /// Where its governance listener is (its FHIR listener takes a free port on the same
    /// address).
    pub listen: SocketAddr,
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
        let fhir = SocketAddr::new(self.listen.ip(), 0).to_string();
        let child = fhirseal(self.netns.as_deref())
            .args(["run", "--data-dir", self.dir(), "--listen", &fhir])
            .env(
                "FHIRSEAL_RAFT_ELECTION_TIMEOUT_MS",
                ELECTION_TIMEOUT_MS.to_string(),
            )
            // Frequent snapshots, so that catching up installs one.
            .env("FHIRSEAL_RAFT_SNAPSHOT_EVERY", "20")
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

    /// Runs `fhirseal consortium ARGS` in the node's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_in(self.netns.as_deref(), args)
    }

    /// [`Node::cli`], expecting success; returns its output.
    pub fn ok(&self, args: &[&str]) -> String {
        ok_in(self.netns.as_deref(), args)
    }

    /// The node's status, through the CLI's JSON.
    pub fn status(&self) -> Status {
        serde_json::from_str(&self.ok(&["status", "--dir", self.dir(), "--json"])).unwrap()
    }

    /// The status, or `None` while the node does not answer.
    pub fn try_status(&self) -> Option<Status> {
        let out = self.cli(&["status", "--dir", self.dir(), "--json"]);
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

    /// The FHIR base its node serves, as its log says (it listens on a free port).
    pub fn fhir_base(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.node_log();
            // The last start's line (a node started again appends to its log).
            if let Some(line) = log
                .lines()
                .rev()
                .find(|l| l.contains("fhirseal is listening"))
            {
                let start = line.find("http://").unwrap();
                let end = start + line[start..].find("/fhir").unwrap();
                return format!("{}/fhir", &line[start..end]);
            }
            assert!(
                Instant::now() < deadline,
                "{} does not listen: {log}",
                self.member
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Cluster {
    _root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub pin: String,
    pub desk: SocketAddr,
    root: PathBuf,
    placement: Arc<dyn Placement>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

impl Cluster {
    /// Founds a consortium of `n` nodes on loopback ports: the regulator (node 1) and `n - 1`
    /// institutions (`h2`, `h3`, …), of which the first `voters - 1` vote; waits until every
    /// node has applied every admission.
    pub fn found(n: u64, voters: u64) -> Self {
        Self::found_on(n, voters, Arc::new(Loopback))
    }

    /// [`Cluster::found`], with each node where `placement` puts it.
    pub fn found_on(n: u64, voters: u64, placement: Arc<dyn Placement>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().to_owned();
        let reg_dir = path.join("regulator");
        let place = placement.node(1);
        let listen = place.listen.to_string();
        let desk = placement.desk();
        let out = ok_with(
            place.netns.as_deref(),
            &[
                "init",
                "--dir",
                reg_dir.to_str().unwrap(),
                "--consortium",
                CONSORTIUM,
                "--listen",
                &listen,
                "--join-listen",
                &desk.to_string(),
            ],
        );
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
                netns: place.netns,
                certificate: pin.clone(),
                listen: place.listen,
                child: None,
            }],
            pin,
            desk,
            root: path,
            placement,
        };
        cluster.nodes[0].start();
        cluster.wait(&[0], "genesis", |s| s.consortium.is_some());
        for id in 2..=n {
            let i = cluster.join(id);
            cluster.admit(i, id <= voters);
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

    /// The regulator invites `member`; returns the one-time token.
    pub fn invite(&self, member: &str) -> String {
        let regulator = &self.nodes[0];
        token_in(&regulator.ok(&["invite", member, "--dir", regulator.dir()]))
    }

    /// The regulator admits the applicant `nodes[i]`, naming the certificate the applicant's
    /// `join` printed.
    pub fn admit(&self, i: usize, voter: bool) {
        let node = &self.nodes[i];
        let fingerprint = node.certificate.clone();
        let mut admit = vec![
            "admit",
            &node.member,
            "--dir",
            self.nodes[0].dir(),
            "--fingerprint",
            &fingerprint,
        ];
        if voter {
            admit.push("--voter");
        }
        self.nodes[0].ok(&admit);
    }

    /// An institution `h{id}`, invited by the regulator, asks to join and starts its node;
    /// returns its index.
    pub fn join(&mut self, id: u64) -> usize {
        let member = format!("h{id}");
        let token = self.invite(&member);
        let dir = self.root.join(&member);
        let place = self.placement.node(id);
        let listen = place.listen.to_string();
        let out = ok_with(
            place.netns.as_deref(),
            &[
                "join",
                &format!("https://{}", self.desk),
                "--pin",
                &self.pin,
                "--invite",
                &token,
                "--dir",
                dir.to_str().unwrap(),
                "--member",
                &member,
                "--node-id",
                &id.to_string(),
                "--listen",
                &listen,
            ],
        );
        let certificate = fingerprint_in(&out);
        let mut node = Node {
            member,
            node_id: id,
            dir,
            netns: place.netns,
            certificate,
            listen: place.listen,
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
        self.wait_all(which, what, |all| all.iter().all(&done))
    }

    /// Polls the nodes `which` until they agree: the same leader, the same last applied index
    /// and the same [`replicated`] state (30 s at most).
    pub fn agree(&self, which: &[usize], what: &str) -> Vec<Status> {
        self.wait_all(which, what, |all| {
            all.iter().all(|s| {
                s.raft.leader.is_some()
                    && s.raft.leader == all[0].raft.leader
                    && s.raft.last_applied == all[0].raft.last_applied
                    && replicated(s) == replicated(&all[0])
            })
        })
    }

    /// Polls the nodes `which` until every one answers and `done` holds for their statuses
    /// together (30 s at most).
    pub fn wait_all(
        &self,
        which: &[usize],
        what: &str,
        done: impl Fn(&[Status]) -> bool,
    ) -> Vec<Status> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses: Vec<Option<Status>> =
                which.iter().map(|i| self.nodes[*i].try_status()).collect();
            if statuses.iter().all(Option::is_some) {
                let statuses: Vec<Status> = statuses.iter().flatten().cloned().collect();
                if done(&statuses) {
                    return statuses;
                }
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
            command_window(wall_clock()),
            command,
            &node.secrets().signing,
        )
    }
}

/// What must be the same on every node: members, revocation list, refusals, link key.
pub fn replicated(s: &Status) -> (String, String, String, u32) {
    (
        format!("{:?}", s.members),
        format!("{:?}", s.revoked_certificates),
        format!("{:?}", s.refusals),
        s.link_key_version,
    )
}

/// The invite token in `invite`'s output: the line of 64 hex digits.
pub fn token_in(out: &str) -> String {
    out.lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned()
}

/// The certificate fingerprint in `join`'s output (after `--fingerprint `).
pub fn fingerprint_in(out: &str) -> String {
    out.split("--fingerprint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint in {out}"))
        .to_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `body` to `path` at the node whose status is `to`, over mutual TLS, presenting
/// `secrets`' certificate; the HTTP status and the answer.
pub fn call_as(
    secrets: &MemberSecrets,
    to: &Status,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let fp = parse_fingerprint(&to.node.certificate).unwrap();
    let peer = Peer {
        member: to.node.member.clone(),
        node_id: to.node.node_id,
    };
    let trust = Trust::pinned(peer, BTreeSet::from([fp]));
    let identity = Identity::new(secrets.certified_key().unwrap());
    runtime().block_on(async {
        let mut channel =
            Channel::new(&to.node.address, &trust, &identity, Some(to.node.node_id)).unwrap();
        let (status, body) = channel
            .call(method, path, body, Duration::from_secs(10))
            .await
            .unwrap();
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    })
}

/// Submits `command` through the node of `dir` (any member's node relays any signed command).
pub fn submit(dir: &Path, command: &SignedCommand) -> SubmitAnswer {
    runtime().block_on(async {
        let mut client = Client::open_dir(dir).unwrap();
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
        let mut client = Client::open_dir(&reg.dir).unwrap();
        let mut samples = Vec::new();
        for i in 0..rounds {
            let command = SignedCommand::sign(
                CONSORTIUM,
                "regulator",
                first + i,
                command_window(wall_clock()),
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
