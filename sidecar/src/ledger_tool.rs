//! The `fhirseal ledger` commands' view of a stopped node: its ledger, and the upstream its
//! anchors are checked against (through the same [`UpstreamClient`] the proxy uses).

use fhirseal_consensus::{Chain, ChainCheck, ChainStore, Transaction, CHAIN_FORMAT};
use fhirseal_storage::chain_store::ChainStoreError;
use serde_json::Value;

use crate::config::Config;
use crate::error::ProxyError;
use crate::ledger::{ledger_dir, LedgerError, NodeLedger};
use crate::server::{open_node, ServerError};
use crate::upstream::UpstreamClient;
use crate::verify::{ledger_check, Compared, CurrentCheck, VersionCheck};

/// What the `fhirseal ledger` commands work on: a stopped node's ledger and vault (sled lets one
/// process hold a database), and the upstream to check the anchors against.
#[derive(Debug)]
pub struct LedgerTool {
    ledger: std::sync::Arc<NodeLedger>,
    upstream: UpstreamClient,
}

/// How many versions one batch read asks the upstream for.
const CHECK_BATCH: usize = 64;

impl LedgerTool {
    /// Opens the node's data directory; refused when it holds no ledger or when the node runs.
    pub async fn open(config: &Config) -> Result<LedgerTool, ServerError> {
        let dir = ledger_dir(config);
        if !dir.exists() {
            return Err(ServerError::Start(format!(
                "there is no ledger in {}: has fhirseal run with this data directory?",
                dir.display()
            )));
        }
        // A running node holds its databases: say so, and what to use while it runs.
        if let Err(e) = ChainStore::open_dir(&dir, &config.seal.institution, CHAIN_FORMAT) {
            return Err(match e {
                ChainStoreError::Locked(_) => ServerError::Start(format!(
                    "{} is in use by a running fhirseal: stop it first (while it runs, GET \
                     /ledger/status, /ledger/verify and [type]/[id]/$verify answer)",
                    config.data_dir.display()
                )),
                other => LedgerError::from(other).into(),
            });
        }
        let (sealing, opened) = open_node(config).await?;
        // Neither the ledger's task nor the anchorer runs: these commands read, they do not
        // anchor.
        drop(opened.anchorer);
        drop(opened.runtime);
        let upstream = UpstreamClient::new(&config.upstream, config.server.max_body_bytes)
            .map_err(|e| ServerError::Start(e.to_string()))?;
        drop(sealing);
        Ok(LedgerTool {
            ledger: opened.ledger,
            upstream,
        })
    }

    /// The ledger.
    pub fn ledger(&self) -> &NodeLedger {
        &self.ledger
    }

    /// Re-verifies the chain from genesis, calling `progress` with each verified height.
    pub fn verify_chain(&self, progress: impl FnMut(u64)) -> Result<ChainCheck, LedgerError> {
        let ledger = self.ledger();
        Ok(Chain::verify_store_with(
            ledger.reader().store(),
            ledger.chain_id(),
            &ledger.rosters(),
            progress,
        )?)
    }

    /// Every version this institution anchored, in chain order.
    pub fn anchored_versions(&self) -> Result<Vec<(String, String, String)>, LedgerError> {
        let ledger = self.ledger();
        let blocks = ledger.reader().tip_height()?.map_or(0, |h| h + 1);
        let mut out = Vec::new();
        for height in 0..blocks {
            let Some(block) = ledger.block(height)? else {
                continue;
            };
            for tx in block.block.transactions {
                if let Transaction::Anchor(batch) = tx {
                    out.extend(
                        batch
                            .entries
                            .into_iter()
                            .filter(|e| e.institution == ledger.institution())
                            .map(|e| (e.resource_type, e.logical_id, e.version_id)),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Checks that the upstream's current version of each resource is anchored (a version
    /// written behind fhirseal's back is not), calling `progress` with how many are done.
    pub async fn check_current(
        &self,
        resources: &[(String, String)],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<CurrentCheck>, ProxyError> {
        let ledger = self.ledger();
        let mut out = Vec::with_capacity(resources.len());
        for chunk in resources.chunks(CHECK_BATCH) {
            let urls: Vec<String> = chunk.iter().map(|(t, i)| format!("{t}/{i}")).collect();
            let stored = self.upstream.read_versions(&urls).await?;
            for ((t, i), (status, value)) in chunk.iter().zip(stored) {
                let current_version = value
                    .as_ref()
                    .and_then(|v| v.pointer("/meta/versionId"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let anchored = match &current_version {
                    Some(v) => ledger.proof(t, i, v)?.is_some() || ledger.is_pending(t, i, v)?,
                    None => false,
                };
                out.push(CurrentCheck {
                    resource_type: t.clone(),
                    id: i.clone(),
                    upstream_status: status,
                    current_version,
                    anchored,
                });
            }
            progress(out.len());
        }
        Ok(out)
    }

    /// Checks each version against the upstream's copy (batches of reads), calling `progress`
    /// with how many are done.
    pub async fn check_upstream(
        &self,
        versions: &[(String, String, String)],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<VersionCheck>, ProxyError> {
        let mut out = Vec::with_capacity(versions.len());
        for chunk in versions.chunks(CHECK_BATCH) {
            let urls: Vec<String> = chunk
                .iter()
                .map(|(t, i, v)| format!("{t}/{i}/_history/{v}"))
                .collect();
            let stored = self.upstream.read_versions(&urls).await?;
            for ((t, i, v), (status, value)) in chunk.iter().zip(stored) {
                let ledger = self.ledger();
                out.push(ledger_check(
                    ledger,
                    ledger.institution(),
                    (t, i, Some(v)),
                    Compared::upstream(value.as_ref(), status)?,
                )?);
            }
            progress(out.len());
        }
        Ok(out)
    }
}

impl LedgerTool {
    /// The resources of `types` the upstream holds and this institution never anchored (no
    /// version of theirs is on the chain or waiting for it): written behind fhirseal's back, or
    /// left by a crash that nothing resolved. Pages through each type's search, newest first;
    /// `progress` is called with how many resources were looked at.
    pub async fn orphans(
        &self,
        types: &[String],
        anchored: &std::collections::BTreeSet<(String, String)>,
        progress: impl FnMut(usize),
    ) -> Result<Vec<(String, String)>, ProxyError> {
        self.orphans_where(types, "", anchored, progress).await
    }

    /// [`LedgerTool::orphans`] among the resources a search matches: `criteria` are search
    /// parameters, encoded as in a URL, added to each type's search (`_tag=system%7Ccode`, …;
    /// empty for all).
    pub async fn orphans_where(
        &self,
        types: &[String],
        criteria: &str,
        anchored: &std::collections::BTreeSet<(String, String)>,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<(String, String)>, ProxyError> {
        let pending: std::collections::BTreeSet<(String, String)> = self
            .ledger
            .outbox()
            .anchors(usize::MAX)
            .map_err(crate::ledger::LedgerError::from)?
            .into_iter()
            .map(|(_, a)| (a.resource_type, a.id))
            .collect();
        let mut orphans = Vec::new();
        let mut seen = 0;
        for resource_type in types {
            let criteria = if criteria.is_empty() {
                String::new()
            } else {
                format!("&{}", criteria.trim_start_matches('&'))
            };
            let mut url = Some(format!(
                "{}/{resource_type}?_count=500&_elements=id&_sort=-_lastUpdated{criteria}",
                self.upstream.base
            ));
            while let Some(next) = url.take() {
                let (status, page) = self.upstream.json(http::Method::GET, &next, None).await?;
                if status != http::StatusCode::OK {
                    return Err(ProxyError::UpstreamBody(format!(
                        "listing {resource_type} answered {status}"
                    )));
                }
                for entry in page["entry"].as_array().into_iter().flatten() {
                    let Some(id) = entry.pointer("/resource/id").and_then(Value::as_str) else {
                        continue;
                    };
                    seen += 1;
                    let key = (resource_type.clone(), id.to_owned());
                    if !anchored.contains(&key) && !pending.contains(&key) {
                        orphans.push(key);
                    }
                }
                progress(seen);
                url = fhirseal_adapters::resource::next_link(&page).map(str::to_owned);
            }
        }
        Ok(orphans)
    }
}
