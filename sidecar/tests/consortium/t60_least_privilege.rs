//! Least privilege, tried as a hostile member would: Raft RPCs a member's node has no business
//! sending, snapshots that do not verify, join requests without an invite, an admission of the
//! wrong certificate, a command replayed after its window. Each is refused, with its reason,
//! and changes nothing on any node.

use std::collections::{BTreeMap, BTreeSet};

use fhirseal_consensus::governance::{
    Admission, Command, ElectionParams, MemberKind, RaftRole, SignedCommand, Validity,
};
use fhirseal_consensus::raft::{BasicNode, GovernanceRequest, SnapshotData, TypeConfig};
use fhirseal_consensus::Timestamp;
use fhirseal_sidecar::consortium::api::Status;
use fhirseal_sidecar::consortium::cli::wall_clock;
use fhirseal_sidecar::consortium::files::{hex, Layout, MemberSecrets};
use fhirseal_sidecar::consortium::transport::SnapshotRpc;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};

use crate::support::{call_as, fails, ok, runtime, serial, submit, Cluster, CONSORTIUM};

/// What a refused RPC must leave as it was on every node.
fn standing(s: &Status) -> (String, Option<String>, u64, Option<u64>, u64) {
    (
        format!("{:?}", s.members),
        s.regulator.clone(),
        s.raft.term,
        s.raft.leader,
        s.refusals_total,
    )
}

/// Posts `body` to `path` at each node of `targets` with `secrets`' certificate, and checks
/// that each refuses it (403) for `reason`.
fn refused_by<'a>(
    secrets: &MemberSecrets,
    targets: impl IntoIterator<Item = &'a Status>,
    path: &str,
    body: &[u8],
    reason: &str,
) {
    for target in targets {
        let (status, answer) = call_as(secrets, target, http::Method::POST, path, body.to_vec());
        assert_eq!(status, 403, "{path} to {}: {answer}", target.node.member);
        assert!(
            answer.contains(reason),
            "{path} to {}: {answer}",
            target.node.member
        );
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// A genesis the member of `secrets` signs, naming itself regulator of the consortium.
fn self_made_genesis(member: &str, node_id: u64, secrets: &MemberSecrets) -> GovernanceRequest {
    let now = wall_clock();
    let regulator = Admission {
        id: member.to_owned(),
        name: member.to_owned(),
        kind: MemberKind::Regulator,
        node_id,
        address: "127.0.0.1:9".into(),
        raft_role: RaftRole::Voter,
        keys: secrets.member_keys().unwrap(),
        stake: 0,
        reputation: 0,
    };
    let command = SignedCommand::sign(
        CONSORTIUM,
        member,
        1,
        Validity::around(now, 60_000, 60_000),
        Command::Genesis {
            regulator,
            election: ElectionParams::NONE,
        },
        &secrets.signing,
    );
    GovernanceRequest::new(command, now).unwrap()
}

/// A snapshot, under `vote`, of a state in which `member` is regulator: built by its own
/// genesis, so its history replays to it, but it continues no one's history.
fn forged_snapshot(
    vote: Vote<u64>,
    member: &str,
    node_id: u64,
    secrets: &MemberSecrets,
) -> Vec<u8> {
    let genesis = std::sync::Arc::new(self_made_genesis(member, node_id, secrets));
    let history = vec![genesis];
    let state = SnapshotData::replay(history.iter().map(|r| r.as_ref()));
    assert_eq!(state.regulator().unwrap().id(), member);
    let data = SnapshotData::new(state, history).to_bytes();
    let last = log_id(vote.leader_id().term, node_id, 10_000);
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, BasicNode::new("127.0.0.1:9"))]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
        snapshot_id: "forged".into(),
    };
    serde_json::to_vec(&SnapshotRpc::new(vote, meta, &data)).unwrap()
}

#[test]
fn raft_rpcs_a_member_may_not_send_are_refused_and_change_nothing() {
    let _serial = serial();
    // Three voters (the regulator, h2, h3) and a learner (h4).
    let mut cluster = Cluster::found(4, 3);
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let before = cluster.agree(&all, "every node to agree before the forgeries");
    let term = before[0].raft.term;
    let leader = before[0].raft.leader.unwrap();
    let learner = cluster.index("h4");
    let learner_secrets = cluster.nodes[learner].secrets();
    let learner_id = cluster.nodes[learner].node_id;

    // The learner, with its own certificate, claims a higher term for itself: an append that
    // would make it leader and found a consortium with itself as regulator, a snapshot of that
    // state, a vote request.
    let genesis = self_made_genesis("h4", learner_id, &learner_secrets);
    let high = term + 5;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(high, learner_id),
        prev_log_id: None,
        entries: vec![Entry {
            log_id: log_id(high, learner_id, 1),
            payload: EntryPayload::Normal(genesis),
        }],
        leader_commit: Some(log_id(high, learner_id, 1)),
    };
    let vote = VoteRequest {
        vote: Vote::new(high, learner_id),
        last_log_id: Some(log_id(high, learner_id, 10_000)),
    };
    let forgeries = [
        ("/raft/append", serde_json::to_vec(&append).unwrap()),
        (
            "/raft/snapshot",
            forged_snapshot(
                Vote::new_committed(high, learner_id),
                "h4",
                learner_id,
                &learner_secrets,
            ),
        ),
        ("/raft/vote", serde_json::to_vec(&vote).unwrap()),
    ];
    let others = |me: usize| {
        before
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != me)
            .map(|(_, s)| s)
    };
    for (path, body) in &forgeries {
        let reason = format!("node {learner_id} is not a voter");
        refused_by(&learner_secrets, others(learner), path, body, &reason);
    }
    // Nor may it speak for the leader.
    let as_leader = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(high, leader),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    refused_by(
        &learner_secrets,
        &before[..1],
        "/raft/append",
        &serde_json::to_vec(&as_leader).unwrap(),
        &format!("names node {leader}, but the peer's certificate is node {learner_id}'s"),
    );

    // A voter that is not the leader sends a snapshot, under its own vote in the current
    // term and under a higher one: refused by every node that follows the leader.
    let voter = all
        .iter()
        .copied()
        .find(|i| *i != learner && cluster.nodes[*i].node_id != leader)
        .unwrap();
    let voter_id = cluster.nodes[voter].node_id;
    let voter_secrets = cluster.nodes[voter].secrets();
    for vote in [
        Vote::new_committed(term, voter_id),
        Vote::new_committed(high, voter_id),
    ] {
        let member = cluster.nodes[voter].member.clone();
        let body = forged_snapshot(vote, &member, voter_id, &voter_secrets);
        let reason = format!("node {voter_id} is not the leader this node follows (node {leader})");
        refused_by(
            &voter_secrets,
            others(voter),
            "/raft/snapshot",
            &body,
            &reason,
        );
    }

    // Even the leader's own certificate cannot install a state whose history does not
    // continue the receiver's.
    let li = all
        .iter()
        .copied()
        .find(|i| cluster.nodes[*i].node_id == leader)
        .unwrap();
    let leader_secrets = cluster.nodes[li].secrets();
    let leader_member = cluster.nodes[li].member.clone();
    let body = forged_snapshot(
        Vote::new_committed(term, leader),
        &leader_member,
        leader,
        &leader_secrets,
    );
    let reason = "does not continue this node's";
    refused_by(&leader_secrets, others(li), "/raft/snapshot", &body, reason);

    // Nothing moved on any node.
    let after: Vec<Status> = all.iter().map(|i| cluster.nodes[*i].status()).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(standing(a), standing(b), "{}", a.node.member);
        assert_eq!(
            a.raft.last_log_index, b.raft.last_log_index,
            "{}",
            a.node.member
        );
    }
    assert!(cluster.nodes[0].node_log().contains("raft rpc refused"));

    // A regulator-signed command whose window has passed is refused, with its reason, by
    // every node, and changes only the refusal log.
    let now = wall_clock().0;
    let last = after[0].member("regulator").unwrap().last_sequence;
    let stale = SignedCommand::sign(
        CONSORTIUM,
        "regulator",
        last + 1,
        Validity {
            not_before: Timestamp(now - 20 * 60 * 1000),
            not_after: Timestamp(now - 10 * 60 * 1000),
        },
        Command::SetStake {
            member: "h2".into(),
            stake: 77,
        },
        &cluster.nodes[0].secrets().signing,
    );
    let answer = submit(&cluster.nodes[voter].dir, &stale);
    assert_eq!(answer.code.as_deref(), Some("Expired"), "{answer:?}");
    assert_eq!(
        answer.error.as_deref(),
        Some("the command's validity window has passed")
    );
    let refused = cluster.wait(&all, "the expired command's refusal everywhere", |s| {
        s.refusals_total == after[0].refusals_total + 1
    });
    for s in &refused {
        let last = s.refusals.last().unwrap();
        assert_eq!(
            (
                last.signer.as_str(),
                last.command.as_str(),
                last.reason.as_str()
            ),
            ("regulator", "SetStake", "Expired"),
            "{}",
            s.node.member
        );
        assert_ne!(s.member("h2").unwrap().stake, 77);
    }
    // Its sequence number is used: the next command signs above it.
    ok(&["stake", "h2", "78", "--dir", cluster.nodes[0].dir()]);
    cluster.wait(&all, "a command after the refusal", |s| {
        s.member("h2").is_some_and(|m| m.stake == 78)
    });

    // A genuine snapshot still goes through: the learner is stopped while the log grows past
    // a snapshot (every 20 entries) and is purged behind it, then started again; the leader
    // brings it up to date with a snapshot, which it checks and installs.
    cluster.nodes[learner].stop();
    let up: Vec<usize> = all.iter().copied().filter(|i| *i != learner).collect();
    runtime().block_on(async {
        let mut client =
            fhirseal_sidecar::consortium::Client::open_dir(&cluster.nodes[0].dir).unwrap();
        for stake in 100..130 {
            client
                .sign_and_submit(Command::SetStake {
                    member: "h2".into(),
                    stake,
                })
                .await
                .unwrap();
        }
    });
    cluster.wait(&up, "the stakes on every running node", |s| {
        s.member("h2").is_some_and(|m| m.stake == 129)
    });
    cluster.start(learner);
    cluster.wait(&[learner], "the learner to catch up", |s| {
        s.member("h2").is_some_and(|m| m.stake == 129)
    });
    cluster.agree(&all, "every node to agree after the catch-up");
    let log = cluster.nodes[learner].node_log();
    assert!(
        log.contains("snapshot verified and handed to raft"),
        "the learner caught up without a snapshot"
    );
    assert!(!log.contains("snapshot refused"), "{log}");
}

#[test]
fn joining_takes_an_invite_and_admitting_the_right_certificate() {
    let _serial = serial();
    let cluster = Cluster::found(1, 1);
    let reg = cluster.nodes[0].dir().to_owned();
    let desk = format!("https://{}", cluster.desk);
    let root = tempfile::tempdir().unwrap();
    let join = |member: &str, dir: &str, invite: Option<&str>| {
        let dir = root.path().join(dir);
        let listen = crate::support::free_port().to_string();
        let mut args = vec![
            "join",
            &desk,
            "--pin",
            &cluster.pin,
            "--dir",
            dir.to_str().unwrap(),
            "--member",
            member,
            "--listen",
            &listen,
            "--rsa-bits",
            "2048",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if let Some(token) = invite {
            args.extend(["--invite".to_owned(), token.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::cli(&args)
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Without an invite, or with one never issued: refused, nothing kept.
    let out = join("h5", "uninvited", None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("403") && stderr(&out).contains("needs an invite"),
        "{}",
        stderr(&out)
    );
    let out = join("h5", "forged-invite", Some(&"0".repeat(64)));
    assert!(
        !out.status.success() && stderr(&out).contains("unknown or already used"),
        "{}",
        stderr(&out)
    );
    assert!(!root
        .path()
        .join("uninvited/consortium/membership.toml")
        .exists());
    assert_eq!(ok(&["joins", "--dir", &reg]), "");

    // An invite is for one member id, and for one request.
    let h2_token = cluster.invite("h2");
    let out = join("h3", "wrong-member", Some(&h2_token));
    assert!(
        !out.status.success() && stderr(&out).contains("for another member id"),
        "{}",
        stderr(&out)
    );
    let out = join("h2", "h2", Some(&h2_token));
    assert!(out.status.success(), "{}", stderr(&out));
    let h2_certificate = crate::support::fingerprint_in(&String::from_utf8_lossy(&out.stdout));
    let out = join("h2", "h2-again", Some(&h2_token));
    assert!(
        !out.status.success()
            && stderr(&out).contains("403")
            && stderr(&out).contains("unknown or already used"),
        "{}",
        stderr(&out)
    );
    let pending = ok(&["joins", "--dir", &reg]);
    assert_eq!(pending.lines().count(), 1, "{pending}");
    assert!(
        pending.starts_with("h2 ") && pending.contains(&format!("certificate {h2_certificate}")),
        "{pending}"
    );

    // Admitting under the wrong certificate is refused before anything is signed.
    let before = cluster.nodes[0].status();
    let impostor = hex(&MemberSecrets::generate(2048)
        .unwrap()
        .certificate_fingerprint());
    let err = fails(&["admit", "h2", "--dir", &reg, "--fingerprint", &impostor]);
    assert!(
        err.contains("names the certificate") && err.contains("not admitted"),
        "{err}"
    );
    let after = cluster.nodes[0].status();
    assert_eq!(standing(&after), standing(&before));
    assert_eq!(after.raft.last_log_index, before.raft.last_log_index);
    assert!(after.member("h2").is_none());

    // Under the right one, it is admitted.
    ok(&[
        "admit",
        "h2",
        "--dir",
        &reg,
        "--fingerprint",
        &h2_certificate,
    ]);
    let admitted = cluster.nodes[0].status();
    assert_eq!(admitted.member("h2").unwrap().certificate, h2_certificate);

    // A member that is not the regulator makes no invites and reads no pending joins at the
    // regulator's node (its certificate is a member's now, so the request reaches the route).
    let layout = Layout::new(root.path().join("h2"));
    let h2 = MemberSecrets::load(&layout.keys(), &layout.keys()).unwrap();
    let invite = serde_json::json!({
        "member": "h9",
        "token_sha256": "ab".repeat(32),
        "expires_at": wall_clock().0 + 60_000,
    });
    let (status, answer) = call_as(
        &h2,
        &admitted,
        http::Method::POST,
        "/consortium/invites",
        serde_json::to_vec(&invite).unwrap(),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("only the regulator's own CLI"), "{answer}");
    let (status, answer) = call_as(
        &h2,
        &admitted,
        http::Method::GET,
        "/consortium/joins",
        Vec::new(),
    );
    assert_eq!(status, 403, "{answer}");
}
