//! Founding a consortium: what `consortium init` and the embedded default's first start write
//! into a node's data directory before its node runs. The regulator's node submits the genesis
//! commands when it first leads ([`crate::consortium::node::RunningNode::start`]).

use std::net::SocketAddr;

use fhirseal_consensus::governance::{
    limits, Admission, Command, ElectionParams, MemberKind, RaftRole, SignedCommand,
};
use fhirseal_storage::keys::make_link_key;

use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::{
    kind_name, wrap_link_key, write_new, Layout, MemberSecrets, Membership,
};
use crate::consortium::window::{wall_clock, window, GENESIS_VALIDITY, WINDOW_BEFORE};

/// A consortium to found.
#[derive(Debug, Clone)]
pub struct Founding {
    /// Its name.
    pub consortium: String,
    /// The regulator's member id (its institution on the ledger).
    pub member: String,
    /// The regulator's display name.
    pub name: String,
    /// The regulator node's Raft id.
    pub node_id: u64,
    /// Where the other members reach the regulator's node.
    pub address: SocketAddr,
    /// Where its join desk listens, if it has one.
    pub join_listen: Option<SocketAddr>,
    /// K: how many delegates finalize the shared ledger (the governance state's default when it
    /// is [`limits::DEFAULT_DELEGATES`]; else a third genesis command sets it).
    pub delegates: u32,
    /// The election's parameters, which the genesis fixes for the consortium's life
    /// ([`ElectionParams::NONE`]: no election, the delegates are the K highest stakes).
    pub election: ElectionParams,
}

impl Founding {
    /// Refuses election parameters the genesis could not carry ([`ElectionParams::is_valid`]),
    /// before anything is written.
    pub fn check(&self) -> Result<()> {
        if self.election.is_valid() {
            return Ok(());
        }
        Err(ConsortiumError::Usage(format!(
            "--epoch-blocks must be 0 (no election) or at least {}, and --max-terms at least 1",
            ElectionParams::MIN_EPOCH_BLOCKS
        )))
    }
}

/// Writes the founding of `founding` into `layout`: the link key (the keystore's, if it holds
/// one already: a data directory from before the node was a consortium member keeps its
/// fingerprints), the regulator's signed genesis and the link key wrapped for it, and the
/// membership, last, which marks the directory as founded. Refused when the directory already
/// belongs to a consortium.
pub fn found(layout: &Layout, secrets: &MemberSecrets, founding: &Founding) -> Result<()> {
    if Membership::load(layout)?.is_some() {
        return Err(ConsortiumError::Usage(format!(
            "{} already belongs to a consortium",
            layout.dir().display()
        )));
    }
    let link_key = make_link_key(&layout.keys())?;
    let keys = secrets.member_keys()?;
    let regulator = Admission {
        id: founding.member.clone(),
        name: founding.name.clone(),
        kind: MemberKind::Regulator,
        node_id: founding.node_id,
        address: founding.address.to_string(),
        raft_role: RaftRole::Voter,
        keys: keys.clone(),
        stake: 0,
        reputation: 0,
    };
    let genesis_window = window(wall_clock(), WINDOW_BEFORE, GENESIS_VALIDITY);
    let genesis = SignedCommand::sign(
        &founding.consortium,
        &founding.member,
        1,
        genesis_window,
        Command::Genesis {
            regulator,
            election: founding.election,
        },
        &secrets.signing,
    );
    let wrap = SignedCommand::sign(
        &founding.consortium,
        &founding.member,
        2,
        genesis_window,
        Command::WrapLinkKey {
            version: 1,
            wrapped: vec![(
                founding.member.clone(),
                wrap_link_key(&link_key, &keys.wrapping_key)?,
            )],
        },
        &secrets.signing,
    );
    let epoch = SignedCommand::sign(
        &founding.consortium,
        &founding.member,
        3,
        genesis_window,
        Command::BeginEpoch {
            epoch: 1,
            delegates: founding.delegates,
        },
        &secrets.signing,
    );
    founding.check()?;
    for command in [&genesis, &wrap] {
        if !command.is_encodable() {
            return Err(ConsortiumError::Usage(
                "a name, id or address is empty or longer than 256 bytes".into(),
            ));
        }
    }
    let genesis_dir = layout.genesis();
    if genesis_dir.exists() {
        // Left by a founding that stopped before its membership was written: never submitted.
        std::fs::remove_dir_all(&genesis_dir)
            .map_err(|e| ConsortiumError::file(&genesis_dir, e))?;
    }
    std::fs::create_dir_all(&genesis_dir).map_err(|e| ConsortiumError::file(&genesis_dir, e))?;
    write_new(
        &genesis_dir.join("001-genesis.cmd"),
        &genesis.to_bytes(),
        false,
    )?;
    write_new(
        &genesis_dir.join("002-link-key.cmd"),
        &wrap.to_bytes(),
        false,
    )?;
    if founding.delegates != limits::DEFAULT_DELEGATES {
        write_new(
            &genesis_dir.join("003-delegates.cmd"),
            &epoch.to_bytes(),
            false,
        )?;
    }
    Membership {
        consortium: founding.consortium.clone(),
        member: founding.member.clone(),
        kind: kind_name(MemberKind::Regulator).to_owned(),
        node_id: founding.node_id,
        address: founding.address,
        join_listen: founding.join_listen,
    }
    .create(layout)
}
