//! The leader rotates its keys while a node is away: the lead does not move, every node applies
//! the rotation, the node that was away catches up from that same leader, and the old
//! certificate is refused everywhere.
//!
//! A rotation is applied at different moments on different nodes: until a node applies it, it
//! accepts only the member's old certificate; from then on only the new one. The leader must be
//! heard by both kinds of node at once, and by a node that was away for the whole rotation,
//! whose state names the old certificate until the leader itself brings it the rotation.
//!
//! Five voters and one learner on loopback ports. The learner (which never stands for election,
//! so that the term is the leader's alone to move) is stopped; the leader's member rotates its
//! keys through its own node; the learner is started again with a state that still names the
//! leader's old certificate.

use std::time::{Duration, Instant};

use fhirseal_sidecar::consortium::files::hex;

use crate::support::{serial, Cluster, ELECTION_TIMEOUT_MS};
use crate::t10_cli::connect_as;

const NODES: u64 = 6;
const VOTERS: u64 = 5;

#[test]
fn the_leader_rotates_its_keys_and_keeps_the_lead() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = Cluster::found(NODES, VOTERS);
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let learner = cluster.nodes.len() - 1;
    let before = cluster.agree(&all, "every node to agree before the rotation")[0].clone();
    let leader = before.raft.leader.unwrap();
    let term = before.raft.term;
    let li = cluster
        .nodes
        .iter()
        .position(|n| n.node_id == leader)
        .unwrap();
    assert_ne!(li, learner, "the learner leads");
    let member = cluster.nodes[li].member.clone();
    let old_secrets = cluster.nodes[li].secrets();
    let old = hex(&old_secrets.certificate_fingerprint());

    // The learner goes away; the leader's member rotates its keys through its own node.
    cluster.nodes[learner].stop();
    let up: Vec<usize> = all.iter().copied().filter(|i| *i != learner).collect();
    let rotating = Instant::now();
    cluster.nodes[li].ok(&["rotate", "--dir", cluster.nodes[li].dir()]);
    let rotated_in = rotating.elapsed();
    let new = hex(&cluster.nodes[li].secrets().certificate_fingerprint());
    assert_ne!(new, old);
    cluster.wait(&up, "the rotation on every running node", |s| {
        s.member(&member).is_some_and(|m| m.certificate == new)
            && s.revoked_certificates.iter().any(|r| r.certificate == old)
    });
    cluster.wait(&[li], "the leader to present its new certificate", |s| {
        s.node.certificate == new
    });
    let applied_in = rotating.elapsed();

    // Several election timeouts later, no node has stood for election: every term is the one
    // before the rotation, and the leader leads.
    std::thread::sleep(Duration::from_millis(4 * 2 * ELECTION_TIMEOUT_MS));
    for i in &up {
        let s = cluster.nodes[*i].status();
        assert_eq!(
            (s.raft.leader, s.raft.term),
            (Some(leader), term),
            "the lead moved after the rotation, seen from {}",
            s.node.member
        );
    }

    // The learner comes back with a state that names the leader's old certificate; the leader
    // brings it the rotation.
    let restarted = Instant::now();
    cluster.start(learner);
    cluster.wait(&[learner], "the learner to catch up from the leader", |s| {
        s.raft.leader == Some(leader)
            && s.member(&member).is_some_and(|m| m.certificate == new)
            && s.revoked_certificates.iter().any(|r| r.certificate == old)
    });
    let caught_up_in = restarted.elapsed();
    let after = cluster.agree(&all, "every node to agree after the learner's return");
    for s in &after {
        assert_eq!(
            (s.raft.leader, s.raft.term),
            (Some(leader), term),
            "{}",
            s.node.member
        );
    }

    // The old certificate opens no connection to any node, the leader's own included; the new
    // one does.
    for s in &after {
        let refused = connect_as(
            &old_secrets,
            &s.node.address,
            &s.node.certificate,
            s.node.node_id,
        );
        assert!(
            refused.is_err(),
            "{} accepts the rotated-away certificate",
            s.node.member
        );
        let accepted = connect_as(
            &cluster.nodes[li].secrets(),
            &s.node.address,
            &s.node.certificate,
            s.node.node_id,
        );
        assert!(
            accepted.is_ok(),
            "{} refuses the new certificate: {accepted:?}",
            s.node.member
        );
    }

    // The consortium still commits, through the rotated leader.
    cluster.nodes[0].ok(&["stake", "h2", "42", "--dir", cluster.nodes[0].dir()]);
    let committed = cluster.wait(&all, "a command after the rotation", |s| {
        s.member("h2").is_some_and(|m| m.stake == 42)
    });
    assert!(committed.iter().all(|s| s.raft.term == term));

    eprintln!(
        "FIGURE rotation: the leader's rotation through the CLI {rotated_in:?}; applied on the five \
         running nodes and presented by the leader {applied_in:?} after it started; the learner \
         caught up {caught_up_in:?} after its restart; term {term} throughout; the whole test {:?}",
        started.elapsed()
    );
}
