//! A consortium of nodes in one process: the regulator's node founds the cluster, admitted
//! voters join it, every node reaches the same decisions, a late learner catches up from a
//! snapshot.

use std::collections::BTreeSet;
use std::time::Duration;

use fhirseal_consensus::governance::{Command, MemberKind, Outcome, RaftRole, Refusal};
use fhirseal_consensus::raft::{GovernanceNode, NodeError};
use fhirseal_consensus::Timestamp;
use tempfile::TempDir;

use crate::support::{applied, config, open_store, Party, Router, REGULATOR};

struct Cluster {
    router: Router,
    // Kept so that each node's directory and database outlive it.
    nodes: Vec<(TempDir, sled::Db, GovernanceNode)>,
}

impl Cluster {
    async fn start(&mut self, id: u64) {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open_store(dir.path());
        // Snapshots every 3 entries, nothing kept behind: a late node must get a snapshot.
        let node = GovernanceNode::start(id, config(3), store, self.router.clone())
            .await
            .unwrap();
        self.router.add(id, node.raft().clone());
        self.nodes.push((dir, db, node));
    }

    fn node(&self, id: u64) -> &GovernanceNode {
        &self.nodes.iter().find(|(_, _, n)| n.id() == id).unwrap().2
    }

    /// Waits until every node in `ids` has applied what the leader (node 1) has.
    async fn settle(&self, ids: &[u64]) -> u64 {
        // The leader's state, not its metrics: those are published after the apply that
        // answered the last command, and may still lag behind it.
        let last = self.node(1).state().last_applied_index().unwrap();
        for id in ids {
            applied(self.node(*id), last).await;
        }
        last
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_the_same_decisions() {
    let mut cluster = Cluster {
        router: Router::default(),
        nodes: Vec::new(),
    };
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let leader = cluster.node(1).clone();
    assert!(leader.initialize("node-1").await.unwrap());
    leader
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "node 1 leads")
        .await
        .unwrap();

    let mut regulator = Party::regulator(1);
    let mut h2 = Party::new("h2", 2, MemberKind::Hospital, RaftRole::Voter);
    let h3 = Party::new("h3", 3, MemberKind::Hospital, RaftRole::Voter);
    let h4 = Party::new("h4", 4, MemberKind::Provider, RaftRole::Learner);
    let now = Timestamp(1_000);
    assert_eq!(
        leader.submit(regulator.genesis(), now).await.unwrap(),
        Outcome::Accepted
    );
    for member in [&h2, &h3] {
        let admit = regulator.sign(member.admission_command());
        assert_eq!(leader.submit(admit, now).await.unwrap(), Outcome::Accepted);
    }

    // The state calls for three voters: the leader makes the Raft membership follow.
    assert!(leader.sync_membership().await.unwrap());
    let voters: BTreeSet<u64> = leader
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert!(
        !leader.sync_membership().await.unwrap(),
        "nothing left to do"
    );

    // An admission not signed by the regulator is refused by every node.
    let by_member = h2.sign(h4.admission_command());
    assert_eq!(
        leader.submit(by_member, now).await.unwrap(),
        Outcome::Refused(Refusal::NotRegulator)
    );
    let mut forged = h2.sign(h4.admission_command());
    forged.signer = REGULATOR.into();
    forged.sequence = 1_000;
    assert_eq!(
        leader.submit(forged, now).await.unwrap(),
        Outcome::Refused(Refusal::BadSignature)
    );
    cluster.settle(&[1, 2, 3]).await;
    for id in 1..=3 {
        let state = cluster.node(id).state().state();
        assert!(state.member("h4").is_none(), "node {id} admitted h4");
        let reasons: Vec<_> = state
            .refusals()
            .map(|r| (r.signer.clone(), r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("h2".to_owned(), Refusal::NotRegulator),
                (REGULATOR.to_owned(), Refusal::BadSignature)
            ],
            "node {id}"
        );
    }

    // Only the leader takes commands; a follower says where it is.
    let stake = regulator.sign(Command::SetStake {
        member: "h2".into(),
        stake: 5,
    });
    match cluster.node(2).submit(stake.clone(), now).await {
        Err(error @ NodeError::ForwardToLeader { .. }) => {
            assert!(error.is_retryable());
            assert!(matches!(
                error,
                NodeError::ForwardToLeader {
                    leader_id: Some(1),
                    ..
                }
            ));
        }
        other => panic!("expected a forward to the leader, got {other:?}"),
    }
    assert_eq!(leader.submit(stake, now).await.unwrap(), Outcome::Accepted);

    // A revocation reaches every node; the revoked member's node leaves the voters.
    let revoke = regulator.sign(Command::Revoke {
        member: "h3".into(),
        reason: "breach".into(),
    });
    assert_eq!(
        leader.submit(revoke, Timestamp(2_000)).await.unwrap(),
        Outcome::Accepted
    );
    cluster.settle(&[1, 2, 3]).await;
    for id in 1..=3 {
        assert!(
            !cluster.node(id).state().read(|s| s.cert_allowed(&[3; 32])),
            "node {id} still accepts h3's certificate"
        );
    }
    assert!(leader.sync_membership().await.unwrap());
    let membership = leader
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    assert_eq!(
        membership.voter_ids().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2])
    );
    assert!(membership.get_node(&3).is_none());

    // A member admitted late joins as a learner, from a snapshot: the log before it is purged.
    cluster.start(4).await;
    let admit = regulator.sign(h4.admission_command());
    assert_eq!(
        leader.submit(admit, Timestamp(3_000)).await.unwrap(),
        Outcome::Accepted
    );
    assert!(leader.raft().metrics().borrow().purged.is_some());
    assert!(leader.sync_membership().await.unwrap());
    cluster.settle(&[1, 2, 4]).await;
    assert!(
        cluster.node(4).raft().metrics().borrow().snapshot.is_some(),
        "node 4 caught up from a snapshot"
    );
    let reference = leader.state().state();
    for id in [2, 4] {
        assert_eq!(cluster.node(id).state().state(), reference, "node {id}");
    }
    assert!(reference.learners().contains_key(&4));

    for (_, _, node) in &cluster.nodes {
        node.shutdown().await.unwrap();
    }
}
