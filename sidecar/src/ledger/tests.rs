//! The ledger at one node: anchoring rounds through the runtime with one delegate (the embedded
//! consortium of one), restarts, the view followed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fhirseal_consensus::{ChainCheck, DelegateSet, PublicKey, Roster, SigningKey};
use fhirseal_storage::chain_store::ChainStoreError;
use fhirseal_storage::{PendingAccess, PendingAnchor, Vault};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::anchorer::{Anchorer, InFlight, Round};
use super::error::LedgerError;
use super::node::{NodeLedger, Opened};
use super::view::LedgerView;
use crate::config::Config;

fn anchor(id: &str, version: &str) -> PendingAnchor {
    PendingAnchor {
        resource_type: "Observation".into(),
        id: id.into(),
        version: version.into(),
        fingerprint: [1; 32],
        sealed_address: [0; 32],
        clinical_hash: [9; 32],
    }
}

fn setup(dir: &Path) -> (Config, Vault) {
    let config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    let vault = Vault::open(&dir.join("vault")).unwrap();
    (config, vault)
}

fn signing() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

/// The ledger of `config` in a consortium of one named after its institution, following `view`.
fn open(
    config: &Config,
    vault: &Vault,
    view: watch::Receiver<LedgerView>,
) -> Result<Opened, LedgerError> {
    open_with(config, vault, view, crate::clock::system())
}

fn open_with(
    config: &Config,
    vault: &Vault,
    view: watch::Receiver<LedgerView>,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<Opened, LedgerError> {
    NodeLedger::open(
        config,
        &config.seal.institution,
        vault.outbox().clone(),
        view,
        None,
        clock,
        Default::default(),
    )
}

/// The consortium of one's view: the node takes part, signs its batches and votes with one key.
fn single(config: &Config) -> watch::Receiver<LedgerView> {
    watch::channel(LedgerView::single_node(&config.seal.institution, signing())).1
}

/// The runtime running, with the anchorer to drive by hand.
struct Running {
    ledger: Arc<NodeLedger>,
    anchorer: Anchorer,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(opened: Opened) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(opened.runtime.run(stopped));
        Self {
            ledger: opened.ledger,
            anchorer: opened.anchorer,
            stop,
            task,
        }
    }

    async fn round(&mut self, flight: &mut Option<InFlight>) -> Result<Round, LedgerError> {
        self.anchorer.round(flight).await
    }

    /// Stops the runtime and lets go of the chain's database.
    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap();
        drop(self.anchorer);
        drop(self.ledger);
    }
}

#[tokio::test]
async fn rounds_anchor_each_version_once_and_clear_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
    let outbox = vault.outbox();
    outbox.push_anchor(&anchor("a", "1")).unwrap();
    outbox.push_anchor(&anchor("b", "1")).unwrap();
    // The same version queued twice (an update the upstream kept as it was).
    outbox.push_anchor(&anchor("a", "1")).unwrap();
    outbox
        .push_access(&PendingAccess {
            principal: "dr-grey".into(),
            resource_type: "Observation".into(),
            id: "a".into(),
            version: String::new(),
            purpose_of_use: "TREAT".into(),
            time_ms: 1,
            reidentified: false,
            exchange: None,
        })
        .unwrap();
    let mut flight = None;
    let round = node.round(&mut flight).await.unwrap();
    assert_eq!((round.anchored, round.audited, round.already), (2, 1, 1));
    assert!(outbox.is_empty());
    let ledger = node.ledger.clone();
    assert!(ledger.proof("Observation", "a", "1").unwrap().is_some());
    let proof = ledger.proof("Observation", "b", "1").unwrap().unwrap();
    ledger.check_proof(&proof).unwrap();
    // One block for the round's two batches, certified by the one delegate in round 0.
    let block = ledger.block(0).unwrap().unwrap();
    assert_eq!(block.block.transactions.len(), 2);
    assert_eq!(block.certificate.signatures().len(), 1);
    assert_eq!(block.certificate.round.0, 0);
    // Nothing waits: no block.
    assert_eq!(node.round(&mut flight).await.unwrap(), Round::default());
    assert!(ledger.block(1).unwrap().is_none());
    assert!(ledger
        .wait_anchored(
            &[("Observation".into(), "b".into(), "1".into())],
            Duration::from_millis(1)
        )
        .await
        .unwrap());
    assert!(matches!(
        ledger.verify_chain().unwrap(),
        ChainCheck::Valid { blocks: 1 }
    ));
    let status = ledger.status().unwrap();
    assert_eq!(status.delegates, vec![config.seal.institution.clone()]);
    assert_eq!(status.blocks, 1);
    node.stop().await;
}

#[tokio::test]
async fn the_latest_anchored_version_is_the_highest_of_that_resource_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
    let outbox = vault.outbox();
    // "10" is anchored before "2" and sorts before it as text: the number decides.
    for (id, version) in [
        ("a", "1"),
        ("a", "10"),
        ("a", "2"),
        ("ab", "11"),
        ("b", "x"),
    ] {
        outbox.push_anchor(&anchor(id, version)).unwrap();
    }
    node.round(&mut None).await.unwrap();
    let ledger = node.ledger.clone();
    let me = config.seal.institution.clone();
    let latest = |institution: &str, id: &str| {
        ledger
            .latest_anchored(institution, "Observation", id)
            .unwrap()
    };
    assert_eq!(latest(&me, "a").as_deref(), Some("10"));
    // "ab" is not a version of "a", nor "a" of "ab".
    assert_eq!(latest(&me, "ab").as_deref(), Some("11"));
    assert_eq!(latest(&me, "b").as_deref(), Some("x"));
    assert_eq!(latest(&me, "c"), None);
    assert_eq!(latest("another-member", "a"), None);
    assert!(ledger.knows_member(&me));
    assert!(!ledger.knows_member("another-member"));
    node.stop().await;
}

#[tokio::test]
async fn an_entry_anchored_before_a_crash_is_not_anchored_again() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    {
        let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
        vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
        let mut flight = None;
        node.round(&mut flight).await.unwrap();
        node.stop().await;
    }
    // As if the process died after the block and before the outbox was cleared.
    vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
    vault.outbox().push_anchor(&anchor("a", "2")).unwrap();
    let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
    let mut flight = None;
    let round = node.round(&mut flight).await.unwrap();
    assert_eq!((round.anchored, round.already), (1, 1));
    assert!(vault.outbox().is_empty());
    assert_eq!(node.ledger.status().unwrap().blocks, 2);
    assert!(matches!(
        node.ledger.verify_chain().unwrap(),
        ChainCheck::Valid { blocks: 2 }
    ));
    node.stop().await;
}

/// Access events on the chain, block after block.
fn access_events_on_chain(ledger: &NodeLedger) -> usize {
    let blocks = ledger.status().unwrap().blocks;
    (0..blocks)
        .map(|h| {
            ledger
                .block(h)
                .unwrap()
                .unwrap()
                .block
                .transactions
                .iter()
                .map(|tx| match tx {
                    fhirseal_consensus::Transaction::Access(batch) => batch.events.len(),
                    _ => 0,
                })
                .sum::<usize>()
        })
        .sum()
}

#[tokio::test]
async fn a_round_final_before_a_crash_is_not_recorded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
    vault
        .outbox()
        .push_access(&PendingAccess {
            principal: "dr-grey".into(),
            resource_type: "Observation".into(),
            id: "a".into(),
            version: "1".into(),
            purpose_of_use: String::new(),
            time_ms: 1,
            reidentified: true,
            exchange: None,
        })
        .unwrap();
    {
        let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
        let mut flight = None;
        let round = node.anchorer.until_final(&mut flight).await.unwrap();
        assert!(round.is_some());
        // The process dies here: the block is on the chain, the outbox is not cleared.
        node.stop().await;
    }
    assert_eq!(vault.outbox().pending(), (1, 1));
    let mut node = Running::start(open(&config, &vault, single(&config)).unwrap());
    let mut flight = None;
    node.round(&mut flight).await.unwrap();
    assert!(vault.outbox().is_empty());
    assert_eq!(vault.outbox().kept_round().unwrap(), None);
    // No second block: the kept round's batches were found final and not made again.
    assert_eq!(node.ledger.status().unwrap().blocks, 1);
    assert_eq!(access_events_on_chain(&node.ledger), 1);
    node.stop().await;
}

#[tokio::test]
async fn the_ledger_follows_its_view_standing_rotation_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    let institution = config.seal.institution.clone();
    let first = signing();
    let mut view = LedgerView::single_node(&institution, first.clone());
    view.not_taking_part = Some("revoked");
    let (publish, follow) = watch::channel(view.clone());
    let mut node = Running::start(open(&config, &vault, follow).unwrap());
    let mut flight = None;

    // Not taking part: nothing is anchored, the outbox keeps it.
    vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
    let err = node.round(&mut flight).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::NotTakingPart("revoked")),
        "{err}"
    );
    assert!(!vault.outbox().is_empty());
    assert!(node.ledger.block(0).unwrap().is_none());

    // Taking part again: anchored with the member's key.
    view.not_taking_part = None;
    publish.send_replace(view.clone());
    assert_eq!(node.round(&mut flight).await.unwrap().anchored, 1);

    // The member rotates its signing key, and the regulator begins an epoch whose delegate is
    // the new key: new batches are signed with it, the block that carries them is still
    // certified with the old key (its epoch's), the next with the new one; the chain verifies
    // against both.
    let second = SigningKey::from_bytes(&[6; 32]);
    let (old, new) = (PublicKey::of(&first), PublicKey::of(&second));
    let delegates = DelegateSet::new(vec![new]).unwrap();
    let current = Roster::new(delegates.clone(), [(institution.clone(), new)]);
    let verifying = Roster::new(
        delegates,
        [(institution.clone(), old), (institution.clone(), new)],
    );
    let epochs = BTreeMap::from([
        (0, vec![(institution.clone(), old)]),
        (1, vec![(institution.clone(), new)]),
    ]);
    publish.send_replace(LedgerView {
        not_taking_part: None,
        current: Arc::new(current.clone()),
        verifying: Arc::new(verifying),
        epochs: Arc::new(epochs),
        members: view.members.clone(),
        signer: Some(second.clone()),
        election: None,
        seats: Arc::new(BTreeMap::new()),
        voter: None,
    });
    vault.outbox().push_anchor(&anchor("a", "2")).unwrap();
    assert_eq!(node.round(&mut flight).await.unwrap().anchored, 1);
    let ledger = node.ledger.clone();
    let proof = ledger.proof("Observation", "a", "2").unwrap().unwrap();
    assert_eq!(proof.batch.signer, new);
    assert_eq!(proof.header.epoch, 0);
    assert_eq!(proof.header.next_epoch, 1);
    vault.outbox().push_anchor(&anchor("a", "3")).unwrap();
    assert_eq!(node.round(&mut flight).await.unwrap().anchored, 1);
    let proof = ledger.proof("Observation", "a", "3").unwrap().unwrap();
    assert_eq!(proof.header.epoch, 1);
    assert_eq!(proof.certificate.signatures()[0].delegate, new);
    assert!(matches!(
        ledger.verify_chain().unwrap(),
        ChainCheck::Valid { blocks: 3 }
    ));
    // Without the key it rotated away from, the first block's batch would not verify.
    let old_proof = ledger.proof("Observation", "a", "1").unwrap().unwrap();
    assert!(ledger.check_proof(&old_proof).is_ok());
    assert!(old_proof
        .verify(
            ledger.chain_id(),
            &current.with_delegates(DelegateSet::new(vec![old]).unwrap())
        )
        .is_err());
    node.stop().await;
}

#[tokio::test]
async fn a_ledger_of_another_institution_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, vault) = setup(dir.path());
    drop(open(&config, &vault, single(&config)).unwrap());
    config.seal.institution = "elsewhere".into();
    // sled's flusher thread lets go of the directory's lock a moment after the last handle is
    // dropped: until then the open is refused as locked.
    let mut tries = 0;
    let err = loop {
        match open(&config, &vault, single(&config)) {
            Err(LedgerError::Chain(fhirseal_consensus::Error::Store(ChainStoreError::Locked(
                _,
            )))) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => break other.unwrap_err(),
        }
    };
    assert!(err.to_string().contains("elsewhere"), "{err}");
}

#[tokio::test]
async fn blocks_are_stamped_with_the_nodes_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (config, vault) = setup(dir.path());
    // A time of day that is not now: only the clock handed in can have put it in the blocks.
    let clock = Arc::new(crate::clock::ManualClock::new(1_600_000_000_000));
    let opened = open_with(&config, &vault, single(&config), clock.clone()).unwrap();
    let mut node = Running::start(opened);
    let mut flight = None;
    vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
    node.round(&mut flight).await.unwrap();
    clock.advance(60_000);
    vault.outbox().push_anchor(&anchor("b", "1")).unwrap();
    node.round(&mut flight).await.unwrap();
    let times: Vec<u64> = (0..2)
        .map(|h| node.ledger.block(h).unwrap().unwrap().header().time.0)
        .collect();
    assert_eq!(times, [1_600_000_000_000, 1_600_000_060_000]);
    node.stop().await;
}
