//! One governance node on a sled directory: commands through Raft, then a restart.

use std::time::{Duration, Instant};

use fhirseal_consensus::governance::{
    Command, MemberKind, MemberStatus, Outcome, RaftRole, Refusal,
};
use fhirseal_consensus::raft::{GovernanceNode, NodeError, SnapshotData, SoloNetwork, Verified};
use fhirseal_consensus::Timestamp;

use crate::support::{applied, config, open_store, Party, REGULATOR};

const NODE: u64 = 1;

async fn start(dir: &std::path::Path, snapshot_every: u64) -> (sled::Db, GovernanceNode) {
    let (db, store) = open_store(dir);
    // The embedded default's setup: one node, no transport.
    let node = GovernanceNode::start(NODE, config(snapshot_every), store, SoloNetwork)
        .await
        .unwrap();
    (db, node)
}

async fn leader(node: &GovernanceNode) {
    node.raft()
        .wait(Some(Duration::from_secs(10)))
        .current_leader(NODE, "leader")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_and_a_revocation_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut regulator = Party::regulator(1);
    let mut h2 = Party::new("h2", 2, MemberKind::Hospital, RaftRole::Learner);
    let h3 = Party::new("h3", 3, MemberKind::Provider, RaftRole::Learner);
    let h4 = Party::new("h4", 4, MemberKind::Hospital, RaftRole::Learner);

    let before = {
        // Snapshots every 4 entries, nothing kept behind them: the restart has to come back
        // from a snapshot plus the log after it.
        let (db, node) = start(dir.path(), 4).await;
        assert!(node.initialize("node-1").await.unwrap());
        leader(&node).await;
        let now = Timestamp(1_000);
        assert_eq!(
            node.submit(regulator.genesis(), now).await.unwrap(),
            Outcome::Accepted
        );
        for member in [&h2, &h3] {
            let admit = regulator.sign(member.admission_command());
            assert_eq!(node.submit(admit, now).await.unwrap(), Outcome::Accepted);
        }
        // h2 tries to admit h4 itself: refused, and the refusal is in the replicated state.
        let by_member = h2.sign(h4.admission_command());
        assert_eq!(
            node.submit(by_member, now).await.unwrap(),
            Outcome::Refused(Refusal::NotRegulator)
        );
        let revoke = regulator.sign(Command::Revoke {
            member: "h3".into(),
            reason: "breach".into(),
        });
        assert_eq!(
            node.submit(revoke, Timestamp(2_000)).await.unwrap(),
            Outcome::Accepted
        );

        // Commit latency of one command on a single node, flushes included.
        let rounds = 20u64;
        let started = Instant::now();
        for i in 0..rounds {
            let stake = regulator.sign(Command::SetStake {
                member: "h2".into(),
                stake: 1_000 + i,
            });
            assert_eq!(
                node.submit(stake, Timestamp(3_000 + i)).await.unwrap(),
                Outcome::Accepted
            );
        }
        eprintln!(
            "single-node commit latency: {:?} per command over {rounds}",
            started.elapsed() / u32::try_from(rounds).unwrap()
        );
        // Commands until one follows the last snapshot the policy made, so that the restart
        // has a snapshot and log entries behind it, whatever the timing of the snapshots.
        let mut extra = 0u64;
        loop {
            let metrics = node.raft().metrics().borrow().clone();
            let snapshot = metrics.snapshot.map_or(0, |s| s.index);
            let applied = metrics.last_applied.map_or(0, |a| a.index);
            if snapshot > 0 && applied > snapshot {
                break;
            }
            assert!(extra < 16, "no command followed a snapshot: {metrics:?}");
            let stake = regulator.sign(Command::SetStake {
                member: "h2".into(),
                stake: 2_000 + extra,
            });
            assert_eq!(
                node.submit(stake, Timestamp(4_000 + extra)).await.unwrap(),
                Outcome::Accepted
            );
            extra += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = node.raft().metrics().borrow().clone();
        assert!(metrics.snapshot.is_some(), "a snapshot was built");
        assert!(metrics.purged.is_some(), "the log was purged behind it");
        let state = node.state().state();
        let history = node.state().history();
        // The snapshot carries what built it: a node that applied nothing may take it.
        let snapshot = node.raft().get_snapshot().await.unwrap().unwrap();
        let data = SnapshotData::from_bytes(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(data.verify(&[]), Ok(Verified::Continues));
        assert!(data.history().len() <= history.len());
        assert_eq!(data.history()[..], history[..data.history().len()]);
        node.shutdown().await.unwrap();
        drop(node);
        drop(db);
        (state, history, extra)
    };
    let (before, history, extra) = before;
    assert!(before.is_active("h2"));
    assert_eq!(before.member("h3").unwrap().status, MemberStatus::Revoked);

    let (_db, node) = start(dir.path(), 4).await;
    // Already a cluster: initializing again is a no-op, not an error.
    assert!(!node.initialize("node-1").await.unwrap());
    leader(&node).await;
    let last = node.raft().metrics().borrow().last_log_index.unwrap();
    applied(&node, last).await;
    let after = node.state().state();
    assert_eq!(after, before);
    // The history came back too (from the snapshot and the slots after it), and builds the
    // state.
    assert_eq!(node.state().history(), history);
    assert_eq!(history.len() as u64, 25 + extra);
    assert_eq!(
        SnapshotData::new(after.clone(), history).verify(&[]),
        Ok(Verified::Continues)
    );
    assert_eq!(after.member("h2").unwrap().profile.stake, 1_019);
    assert!(!after.cert_allowed(&[3; 32]));
    assert_eq!(after.refusals_total(), 1);
    assert_eq!(after.refusals().next().unwrap().signer, "h2");
    assert_eq!(after.regulator().unwrap().id(), REGULATOR);

    // The node goes on where it stopped: sequence numbers included.
    let replay = {
        let mut old = Party::regulator(1);
        old.genesis();
        old.sign(Command::SetStake {
            member: "h2".into(),
            stake: 1,
        })
    };
    assert_eq!(
        node.submit(replay, Timestamp(9_000)).await.unwrap(),
        Outcome::Refused(Refusal::Replayed)
    );
    let admit = regulator.sign(h4.admission_command());
    assert_eq!(
        node.submit(admit, Timestamp(9_001)).await.unwrap(),
        Outcome::Accepted
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_command_is_refused_before_it_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, node) = start(dir.path(), 100).await;
    node.initialize("node-1").await.unwrap();
    leader(&node).await;
    let mut regulator = Party::regulator(1);
    let oversized = regulator.sign(Command::Suspend {
        member: "x".repeat(10_000),
        reason: String::new(),
    });
    assert!(matches!(
        node.submit(oversized, Timestamp(1)).await,
        Err(NodeError::Unencodable(_))
    ));
    node.shutdown().await.unwrap();
}
