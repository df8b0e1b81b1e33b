//! How openraft's records are kept on disk, in the ledger's hand-written encoding (see
//! [`crate::codec`]): log ids, votes, memberships, log entries, snapshot metadata.
//!
//! Not serde: the log outlives versions of openraft and of serde formats, and what is on disk
//! must read back the same whatever the workspace's serde features (ours has serde_json's
//! `arbitrary_precision` turned on by fhirbolt).

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use crate::codec::{self, DecodeError, Reader, Writer};
use crate::governance::limits;
use crate::raft::request::GovernanceRequest;
use crate::raft::types::{NodeId, TypeConfig};

/// Most voter sets in a membership (two during a joint change) and most nodes in one.
const MAX_CONFIGS: usize = 2;

pub(crate) fn write_log_id(w: &mut Writer, id: &LogId<NodeId>) {
    w.u64(id.leader_id.term);
    w.u64(id.leader_id.node_id);
    w.u64(id.index);
}

pub(crate) fn read_log_id(r: &mut Reader<'_>) -> Result<LogId<NodeId>, DecodeError> {
    let term = r.u64("log id term")?;
    let node_id = r.u64("log id node")?;
    let index = r.u64("log id index")?;
    Ok(LogId::new(CommittedLeaderId::new(term, node_id), index))
}

fn write_option_log_id(w: &mut Writer, id: &Option<LogId<NodeId>>) {
    match id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            write_log_id(w, id);
        }
    }
}

fn read_option_log_id(r: &mut Reader<'_>) -> Result<Option<LogId<NodeId>>, DecodeError> {
    match r.u8("log id presence")? {
        0 => Ok(None),
        1 => Ok(Some(read_log_id(r)?)),
        tag => Err(DecodeError::UnknownTag {
            field: "log id presence",
            tag,
        }),
    }
}

fn write_membership(w: &mut Writer, membership: &Membership<NodeId, BasicNode>) {
    let configs = membership.get_joint_config();
    w.len(configs.len());
    for config in configs {
        w.len(config.len());
        for id in config {
            w.u64(*id);
        }
    }
    let nodes: Vec<_> = membership.nodes().collect();
    w.len(nodes.len());
    for (id, node) in nodes {
        w.u64(*id);
        w.str(&node.addr);
    }
}

fn read_membership(r: &mut Reader<'_>) -> Result<Membership<NodeId, BasicNode>, DecodeError> {
    let n = r.count("membership configs", MAX_CONFIGS, 4)?;
    let mut configs = Vec::with_capacity(n);
    for _ in 0..n {
        let m = r.count("voters", limits::MAX_MEMBERS, 8)?;
        let mut voters = BTreeSet::new();
        for _ in 0..m {
            if !voters.insert(r.u64("voter")?) {
                return Err(DecodeError::NotCanonical("voters"));
            }
        }
        configs.push(voters);
    }
    let n = r.count("nodes", limits::MAX_MEMBERS, 8 + 4)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64("node id")?;
        let addr = r.string("node address", limits::MAX_NAME_LEN)?;
        if nodes.insert(id, BasicNode { addr }).is_some() {
            return Err(DecodeError::NotCanonical("nodes"));
        }
    }
    Ok(Membership::new(configs, nodes))
}

pub(crate) fn write_stored_membership(
    w: &mut Writer,
    membership: &StoredMembership<NodeId, BasicNode>,
) {
    write_option_log_id(w, membership.log_id());
    write_membership(w, membership.membership());
}

pub(crate) fn read_stored_membership(
    r: &mut Reader<'_>,
) -> Result<StoredMembership<NodeId, BasicNode>, DecodeError> {
    let log_id = read_option_log_id(r)?;
    Ok(StoredMembership::new(log_id, read_membership(r)?))
}

/// Version byte, then the vote: term, node, committed (0 or 1).
pub(crate) fn vote_to_bytes(vote: &Vote<NodeId>) -> Vec<u8> {
    let mut w = Writer::with_capacity(18);
    w.u8(codec::FORMAT_VERSION);
    w.u64(vote.leader_id.term);
    w.u64(vote.leader_id.node_id);
    w.u8(u8::from(vote.committed));
    w.into_bytes()
}

pub(crate) fn vote_from_bytes(bytes: &[u8]) -> Result<Vote<NodeId>, DecodeError> {
    top_level(bytes, |r| {
        let term = r.u64("vote term")?;
        let node_id = r.u64("vote node")?;
        let committed = match r.u8("vote committed")? {
            0 => false,
            1 => true,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "vote committed",
                    tag,
                })
            }
        };
        Ok(if committed {
            Vote::new_committed(term, node_id)
        } else {
            Vote::new(term, node_id)
        })
    })
}

/// Version byte, then the log id.
pub(crate) fn log_id_to_bytes(id: &LogId<NodeId>) -> Vec<u8> {
    let mut w = Writer::with_capacity(25);
    w.u8(codec::FORMAT_VERSION);
    write_log_id(&mut w, id);
    w.into_bytes()
}

pub(crate) fn log_id_from_bytes(bytes: &[u8]) -> Result<LogId<NodeId>, DecodeError> {
    top_level(bytes, read_log_id)
}

/// Version byte, log id, then a payload tag: 0 blank, 1 a governance request (its body),
/// 2 a membership.
pub(crate) fn entry_to_bytes(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut w = Writer::with_capacity(256);
    w.u8(codec::FORMAT_VERSION);
    write_log_id(&mut w, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => w.u8(0),
        EntryPayload::Normal(request) => {
            w.u8(1);
            codec::Wire::write(request, &mut w);
        }
        EntryPayload::Membership(membership) => {
            w.u8(2);
            write_membership(&mut w, membership);
        }
    }
    w.into_bytes()
}

pub(crate) fn entry_from_bytes(bytes: &[u8]) -> Result<Entry<TypeConfig>, DecodeError> {
    top_level(bytes, |r| {
        let log_id = read_log_id(r)?;
        let payload = match r.u8("entry payload")? {
            0 => EntryPayload::Blank,
            1 => EntryPayload::Normal(<GovernanceRequest as codec::Wire>::read(r)?),
            2 => EntryPayload::Membership(read_membership(r)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "entry payload",
                    tag,
                })
            }
        };
        Ok(Entry { log_id, payload })
    })
}

/// Version byte, last log id, last membership, snapshot id, then the snapshot's data (its own
/// bytes, a [`crate::raft::SnapshotData`] encoding).
pub(crate) fn snapshot_to_bytes(meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(128 + data.len());
    w.u8(codec::FORMAT_VERSION);
    write_option_log_id(&mut w, &meta.last_log_id);
    write_stored_membership(&mut w, &meta.last_membership);
    w.str(&meta.snapshot_id);
    w.bytes(data);
    w.into_bytes()
}

pub(crate) fn snapshot_from_bytes(
    bytes: &[u8],
) -> Result<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>), DecodeError> {
    top_level(bytes, |r| {
        let meta = SnapshotMeta {
            last_log_id: read_option_log_id(r)?,
            last_membership: read_stored_membership(r)?,
            snapshot_id: r.string("snapshot id", limits::MAX_NAME_LEN)?,
        };
        let data = r.bytes("snapshot data", usize::MAX)?;
        Ok((meta, data))
    })
}

/// Version byte, last applied log id, last membership, the governance state's body, then how
/// many governance requests were applied (the history, kept in slots of its own).
pub(crate) fn applied_to_bytes(
    last_applied: &Option<LogId<NodeId>>,
    membership: &StoredMembership<NodeId, BasicNode>,
    state: &[u8],
    history_len: u64,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(136 + state.len());
    w.u8(codec::FORMAT_VERSION);
    write_option_log_id(&mut w, last_applied);
    write_stored_membership(&mut w, membership);
    w.bytes(state);
    w.u64(history_len);
    w.into_bytes()
}

/// The inverse of [`applied_to_bytes`]: the last applied log id, the membership, the state's
/// bytes, the history's length.
pub(crate) type AppliedParts = (
    Option<LogId<NodeId>>,
    StoredMembership<NodeId, BasicNode>,
    Vec<u8>,
    u64,
);

pub(crate) fn applied_from_bytes(bytes: &[u8]) -> Result<AppliedParts, DecodeError> {
    top_level(bytes, |r| {
        Ok((
            read_option_log_id(r)?,
            read_stored_membership(r)?,
            r.bytes("governance state", usize::MAX)?,
            r.u64("history length")?,
        ))
    })
}

fn top_level<T>(
    bytes: &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    match r.u8("format version")? {
        codec::FORMAT_VERSION => {}
        other => return Err(DecodeError::Version(other)),
    }
    let value = read(&mut r)?;
    r.finish()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn entries_round_trip() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("a:1")),
                (2, BasicNode::new("b:2")),
                (3, BasicNode::new("c:3")),
                (9, BasicNode::new("learner:9")),
            ]),
        );
        let entries = [
            Entry::<TypeConfig> {
                log_id: log_id(3, 1, 7),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(u64::MAX, 2, 8),
                payload: EntryPayload::Membership(membership),
            },
        ];
        for entry in entries {
            let bytes = entry_to_bytes(&entry);
            let back = entry_from_bytes(&bytes).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(
                format!("{:?}", back.payload),
                format!("{:?}", entry.payload)
            );
            assert_eq!(entry_to_bytes(&back), bytes);
        }
    }

    #[test]
    fn votes_and_log_ids_round_trip() {
        for vote in [Vote::new(4, 2), Vote::new_committed(5, 3)] {
            assert_eq!(vote_from_bytes(&vote_to_bytes(&vote)).unwrap(), vote);
        }
        let id = log_id(1, 2, 3);
        assert_eq!(log_id_from_bytes(&log_id_to_bytes(&id)).unwrap(), id);
        let mut bytes = vote_to_bytes(&Vote::new(1, 1));
        *bytes.last_mut().unwrap() = 2;
        assert!(vote_from_bytes(&bytes).is_err());
    }
}
