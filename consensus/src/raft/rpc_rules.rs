//! Who may send a node which Raft RPC: pure rules over what the receiving node knows, for the
//! transport to apply before it hands an RPC to openraft.
//!
//! openraft trusts its network: whoever reaches a node's `append_entries` with a higher vote
//! becomes the leader it follows, whoever reaches `vote` can move its term, and whoever reaches
//! snapshot installation replaces its state. The transport knows who is on the other end (the
//! member whose certificate the TLS peer presented, and that member's Raft node); these rules
//! say what that peer may claim:
//!
//! - every RPC names a node (the leader of an append or a snapshot, the candidate of a vote):
//!   it must be the peer's own node, so that no member speaks for another;
//! - that node must be a voter in the membership the receiver knows: learners replicate, they
//!   never lead nor stand for election;
//! - a snapshot must come from the leader the receiver follows, or, when it follows none (a
//!   node just started or standing for election), from a node whose vote is at least its own.
//!   A voter that is not the leader may not replace a follower's state, even with a higher vote:
//!   a leader's first words to a follower are appends, which make the follower follow it.
//!
//! What a snapshot carries is checked apart ([`crate::raft::SnapshotData::verify`]).

use std::collections::BTreeSet;

use openraft::Vote;

use crate::raft::types::NodeId;

/// A Raft RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpc {
    /// `AppendEntries`, heartbeats included.
    Append,
    /// `RequestVote`.
    Vote,
    /// A whole snapshot to install.
    Snapshot,
}

impl std::fmt::Display for RaftRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append => "append-entries",
            Self::Vote => "vote",
            Self::Snapshot => "snapshot",
        })
    }
}

/// What the receiving node knows when an RPC arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// The nodes that vote, in the membership it knows.
    pub voters: BTreeSet<NodeId>,
    /// Its vote: the term, the node it voted for, and whether that node leads (a committed
    /// vote is the leader it follows, as openraft reports it).
    pub vote: Vote<NodeId>,
}

impl Receiver {
    /// The leader it follows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.vote
            .is_committed()
            .then_some(self.vote.leader_id().node_id)
    }
}

/// Why an RPC is refused. Nothing of it reaches openraft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcRefusal {
    /// The RPC speaks for a node other than the peer's.
    #[error("the {rpc} names node {claimed}, but the peer's certificate is node {peer}'s")]
    NotPeersNode {
        /// The RPC.
        rpc: RaftRpc,
        /// The node it names.
        claimed: NodeId,
        /// The peer's node.
        peer: NodeId,
    },
    /// The peer's node does not vote.
    #[error("node {node} is not a voter: it may not send a {rpc}")]
    NotVoter {
        /// The RPC.
        rpc: RaftRpc,
        /// The peer's node.
        node: NodeId,
    },
    /// A snapshot from a node that is not the leader this node follows.
    #[error("node {sender} is not the leader this node follows (node {leader}): it may not send a snapshot")]
    NotLeader {
        /// The sending node.
        sender: NodeId,
        /// The leader this node follows.
        leader: NodeId,
    },
    /// A snapshot under a vote below this node's.
    #[error("the snapshot's vote {vote} is not at least this node's ({own})")]
    StaleVote {
        /// The snapshot's vote.
        vote: String,
        /// This node's.
        own: String,
    },
}

/// Whether `receiver` may hand `rpc`, sent under `vote` by the TLS peer whose member's node is
/// `peer`, to openraft (see the module's documentation).
pub fn authorize(
    rpc: RaftRpc,
    vote: &Vote<NodeId>,
    peer: NodeId,
    receiver: &Receiver,
) -> Result<(), RpcRefusal> {
    let claimed = vote.leader_id().node_id;
    if claimed != peer {
        return Err(RpcRefusal::NotPeersNode { rpc, claimed, peer });
    }
    if !receiver.voters.contains(&peer) {
        return Err(RpcRefusal::NotVoter { rpc, node: peer });
    }
    if rpc == RaftRpc::Snapshot {
        if let Some(leader) = receiver.leader().filter(|l| *l != peer) {
            return Err(RpcRefusal::NotLeader {
                sender: peer,
                leader,
            });
        }
        // `Vote` is partially ordered: two votes of one term for different nodes compare as
        // neither, and neither is at least the other.
        let at_least = matches!(
            vote.partial_cmp(&receiver.vote),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        );
        if !at_least {
            return Err(RpcRefusal::StaleVote {
                vote: vote.to_string(),
                own: receiver.vote.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 4 follows leader 1 in term 3; voters 1, 2, 3; 4 and 5 are learners.
    fn follower() -> Receiver {
        Receiver {
            voters: BTreeSet::from([1, 2, 3]),
            vote: Vote::new_committed(3, 1),
        }
    }

    #[test]
    fn the_leader_may_send_everything() {
        let receiver = follower();
        assert_eq!(receiver.leader(), Some(1));
        for rpc in [RaftRpc::Append, RaftRpc::Vote, RaftRpc::Snapshot] {
            assert_eq!(
                authorize(rpc, &Vote::new_committed(3, 1), 1, &receiver),
                Ok(())
            );
        }
    }

    #[test]
    fn no_one_speaks_for_another_node() {
        let receiver = follower();
        for rpc in [RaftRpc::Append, RaftRpc::Vote, RaftRpc::Snapshot] {
            // Voter 2 claims to be the leader, or a candidate, under node 1's name.
            assert_eq!(
                authorize(rpc, &Vote::new_committed(3, 1), 2, &receiver),
                Err(RpcRefusal::NotPeersNode {
                    rpc,
                    claimed: 1,
                    peer: 2
                })
            );
        }
    }

    #[test]
    fn learners_neither_lead_nor_stand() {
        let receiver = follower();
        for rpc in [RaftRpc::Append, RaftRpc::Vote, RaftRpc::Snapshot] {
            // Learner 5, in its own name, with a higher term.
            let refused = authorize(rpc, &Vote::new_committed(9, 5), 5, &receiver);
            assert_eq!(refused, Err(RpcRefusal::NotVoter { rpc, node: 5 }));
        }
        assert!(authorize(RaftRpc::Vote, &Vote::new(9, 5), 5, &receiver).is_err());
        // A node no one admitted.
        assert!(authorize(RaftRpc::Append, &Vote::new_committed(9, 42), 42, &receiver).is_err());
    }

    #[test]
    fn voters_may_stand_and_lead_with_a_higher_term() {
        let receiver = follower();
        assert_eq!(
            authorize(RaftRpc::Vote, &Vote::new(4, 2), 2, &receiver),
            Ok(())
        );
        assert_eq!(
            authorize(RaftRpc::Append, &Vote::new_committed(4, 2), 2, &receiver),
            Ok(())
        );
    }

    #[test]
    fn a_snapshot_comes_from_the_leader_followed() {
        let receiver = follower();
        for vote in [Vote::new_committed(3, 2), Vote::new_committed(9, 2)] {
            assert_eq!(
                authorize(RaftRpc::Snapshot, &vote, 2, &receiver),
                Err(RpcRefusal::NotLeader {
                    sender: 2,
                    leader: 1
                })
            );
        }
        // The leader followed, under a vote older than the one it follows it by.
        assert!(matches!(
            authorize(RaftRpc::Snapshot, &Vote::new_committed(2, 1), 1, &receiver),
            Err(RpcRefusal::StaleVote { .. })
        ));
    }

    #[test]
    fn a_node_that_follows_no_one_takes_a_snapshot_from_a_vote_at_least_its_own() {
        // Just started: the default vote.
        let fresh = Receiver {
            voters: BTreeSet::from([1]),
            vote: Vote::default(),
        };
        assert_eq!(fresh.leader(), None);
        assert_eq!(
            authorize(RaftRpc::Snapshot, &Vote::new_committed(1, 1), 1, &fresh),
            Ok(())
        );
        // Standing for election in term 5 (it voted for itself).
        let candidate = Receiver {
            voters: BTreeSet::from([1, 2, 3]),
            vote: Vote::new(5, 3),
        };
        assert_eq!(candidate.leader(), None);
        assert_eq!(
            authorize(RaftRpc::Snapshot, &Vote::new_committed(6, 2), 2, &candidate),
            Ok(())
        );
        // Same term, another node: the votes do not compare.
        assert!(matches!(
            authorize(RaftRpc::Snapshot, &Vote::new_committed(5, 2), 2, &candidate),
            Err(RpcRefusal::StaleVote { .. })
        ));
        assert!(matches!(
            authorize(RaftRpc::Snapshot, &Vote::new_committed(4, 2), 2, &candidate),
            Err(RpcRefusal::StaleVote { .. })
        ));
    }
}
