//! `fhirseal check`: a stopped node's stores, verified whole.
//!
//! - the clean-stop seal ([`crate::stores`]): a store whose files changed since is reported and
//!   not opened (sled would cut what it cannot read);
//! - the vault: every record hashes to its address, decodes and decrypts with the node's keys;
//!   every index points at a record of its resource ([`fhirseal_storage::Vault::check`]);
//! - the ledger: the chain re-verified from genesis against the governance state's rosters;
//!   every version this institution anchored with identity has its record in the vault;
//! - governance: the Raft log read whole, the state machine read back.

use fhirseal_consensus::{Chain, ChainCheck, Transaction};
use fhirseal_storage::raft_store::RaftStore;

use crate::config::Config;
use crate::consortium::files::Layout;
use crate::server::{open_node, ServerError};
use crate::stores::{self, Store, StoreError};

/// What is being checked, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Records of the vault decrypted (of the total).
    Vault,
    /// Blocks of the chain verified (of the total).
    Chain,
}

/// One store's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub store: Store,
    /// What was checked, when it is sound.
    pub summary: String,
    /// What is wrong (empty: sound).
    pub problems: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub verdicts: Vec<Verdict>,
}

impl Report {
    /// Whether every store is sound.
    pub fn is_sound(&self) -> bool {
        self.verdicts.iter().all(|v| v.problems.is_empty())
    }

    fn add(&mut self, store: Store, summary: String, problems: Vec<String>) {
        self.verdicts.push(Verdict {
            store,
            summary,
            problems,
        });
    }
}

/// Checks the stores of `config`'s stopped node; `progress` is told (stage, done, total).
/// An error is a check that could not run (the node runs, no node is there); damage is in
/// the report.
pub async fn check(
    config: &Config,
    progress: &mut (dyn FnMut(Stage, u64, u64) + Send),
) -> Result<Report, ServerError> {
    let mut report = Report::default();
    let seal = stores::check_seal(&config.data_dir)?;
    if !seal.differences.is_empty() {
        for store in Store::ALL {
            let problems: Vec<String> = seal
                .differences
                .iter()
                .filter(|(s, _)| *s == store)
                .map(|(_, what)| format!("{what} (not opened: sled would cut what it cannot read)"))
                .collect();
            report.add(
                store,
                "as fhirseal left it at its clean stop".to_owned(),
                problems,
            );
        }
        return Ok(report);
    }
    let (sealing, opened) = match open_node(config).await {
        Ok(parts) => parts,
        Err(ServerError::Store(StoreError::Damaged { store, what, .. })) => {
            report.add(store, String::new(), vec![what]);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    // Neither the ledger's task nor the anchorer runs: this reads.
    drop(opened.anchorer);
    drop(opened.runtime);
    let ledger = opened.ledger;

    let total = sealing.vault().record_count() as u64;
    let vault = tokio::task::block_in_place(|| {
        sealing.check_vault(|done| progress(Stage::Vault, done, total))
    })?;
    let mut vault_problems = vault.problems.clone();
    if vault.problem_count > vault.problems.len() as u64 {
        vault_problems.push(format!(
            "… and {} more",
            vault.problem_count - vault.problems.len() as u64
        ));
    }

    let blocks = ledger
        .reader()
        .tip_height()
        .map_err(crate::ledger::LedgerError::from)?
        .map_or(0, |h| h + 1);
    let chain = tokio::task::block_in_place(|| {
        Chain::verify_store_with(
            ledger.reader().store(),
            ledger.chain_id(),
            &ledger.rosters(),
            |height| progress(Stage::Chain, height + 1, blocks),
        )
    })
    .map_err(crate::ledger::LedgerError::from)?;
    let mut chain_problems = Vec::new();
    let mut anchored = 0u64;
    match chain {
        ChainCheck::Valid { .. } => {
            // Every version anchored with identity has it in the vault.
            for height in 0..blocks {
                let Some(block) = ledger.block(height)? else {
                    continue;
                };
                for tx in block.block.transactions {
                    let Transaction::Anchor(batch) = tx else {
                        continue;
                    };
                    for entry in batch.entries {
                        if entry.institution != ledger.institution()
                            || entry.sealed_address == [0; 32]
                        {
                            continue;
                        }
                        anchored += 1;
                        let held = sealing
                            .vault()
                            .has_version(&entry.resource_type, &entry.logical_id, &entry.version_id)
                            .map_err(crate::sealing::SealError::from)?;
                        if !held {
                            vault_problems.push(format!(
                                "{}/{}/_history/{} is anchored on the chain with identity, but \
                                 the vault has no record of it (lost, or a write a crash cut off \
                                 before it was acknowledged)",
                                entry.resource_type, entry.logical_id, entry.version_id
                            ));
                        }
                    }
                }
            }
        }
        ChainCheck::Broken { height, fault } => {
            chain_problems.push(format!("block {height} does not verify: {fault}"));
        }
    }
    report.add(
        Store::Vault,
        format!(
            "{} records decrypt and match their addresses, {} versions indexed",
            vault.records, vault.versions
        ),
        vault_problems,
    );
    report.add(
        Store::Ledger,
        format!(
            "{blocks} blocks verify from genesis; {anchored} versions of {} anchored with \
             identity, each in the vault",
            ledger.institution()
        ),
        chain_problems,
    );
    drop(ledger);
    drop(sealing);

    // The governance store: the log read whole (`open_node` read the state machine back).
    let raft = Layout::of(config).raft();
    let data_dir = config.data_dir.clone();
    let governance = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let db = fhirseal_storage::open::open_db(&raft)
            .map_err(|e| StoreError::opened(Store::Governance, &data_dir, &e))?;
        let store = RaftStore::open(&db).map_err(crate::consortium::ConsortiumError::from)?;
        Ok(store.entries(..))
    })
    .await
    .map_err(|e| ServerError::Start(e.to_string()))??;
    match governance {
        Ok(entries) => report.add(
            Store::Governance,
            format!(
                "{} log entries read, the governance state reads back",
                entries.len()
            ),
            Vec::new(),
        ),
        Err(e) => report.add(
            Store::Governance,
            String::new(),
            vec![format!("the log does not read back: {e}")],
        ),
    }
    Ok(report)
}
