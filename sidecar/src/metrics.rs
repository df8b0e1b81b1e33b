//! The node's metrics, in the Prometheus text format (`prometheus-client`): counters and
//! histograms registered once at start and recorded where things happen (the proxy's phases,
//! sealing, the vault's committer and flusher, the anchorer), and gauges of the node's state
//! (outbox, ledger, governance) set from a [`NodeState`] at each scrape. Served on the admin
//! listener ([`crate::admin`]), never on the FHIR port.
//!
//! It knows what is counted and under which names; it does not know where the counted things
//! happen, and it never labels anything with what a request carried (an id, a query, a
//! principal): labels are interactions, statuses, reasons and member statuses, a bounded set.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A request's interaction and answer status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub interaction: String,
    pub status: u16,
}

/// An interaction alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InteractionLabels {
    pub interaction: String,
}

/// Why a request was refused (the `OperationOutcome`'s issue code) and with what status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
    pub status: u16,
}

/// Members by status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 100 µs to about 1.6 min, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The node's state at a scrape: what the gauges show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// Anchors and access events waiting in the outbox.
    pub pending_anchors: u64,
    pub pending_access_events: u64,
    /// How long what waits in the outbox has waited, at most (0 when nothing waits).
    pub anchor_lag: Duration,
    /// Blocks in this node's copy of the chain, and transactions waiting here for one.
    pub ledger_blocks: u64,
    pub ledger_waiting: u64,
    /// The governance layer: Raft term, whether this node leads, members by status.
    pub governance_term: u64,
    pub governance_leader: bool,
    pub members: Vec<(String, u64)>,
}

/// Every metric of the node (see the module's documentation).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<InteractionLabels>,
    refusals: Family<RefusalLabels, Counter>,
    seals: Counter,
    seal_seconds: Histogram,
    reidentified: Counter,
    unseal_seconds: Histogram,
    vault_commit_seconds: Histogram,
    vault_flush_seconds: Histogram,
    access_events: Counter,
    finality_seconds: Histogram,
    pending_anchors: Gauge,
    pending_access_events: Gauge,
    anchor_lag_seconds: Gauge<f64, AtomicU64>,
    ledger_blocks: Gauge,
    ledger_waiting: Gauge,
    governance_term: Gauge,
    governance_leader: Gauge,
    members: Family<StatusLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fhirseal");
        let metrics = Metrics {
            requests: Family::default(),
            request_seconds: Histograms::new_with_constructor(seconds),
            refusals: Family::default(),
            seals: Counter::default(),
            seal_seconds: seconds(),
            reidentified: Counter::default(),
            unseal_seconds: seconds(),
            vault_commit_seconds: seconds(),
            vault_flush_seconds: seconds(),
            access_events: Counter::default(),
            finality_seconds: seconds(),
            pending_anchors: Gauge::default(),
            pending_access_events: Gauge::default(),
            anchor_lag_seconds: Gauge::default(),
            ledger_blocks: Gauge::default(),
            ledger_waiting: Gauge::default(),
            governance_term: Gauge::default(),
            governance_leader: Gauge::default(),
            members: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "FHIR requests answered, by interaction and status",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time to answer a FHIR request, by interaction",
            Unit::Seconds,
            metrics.request_seconds.clone(),
        );
        r.register(
            "refusals",
            "Requests refused or failed, by the OperationOutcome's issue code and status",
            metrics.refusals.clone(),
        );
        r.register(
            "seals",
            "Identity parts sealed (one per resource version written)",
            metrics.seals.clone(),
        );
        r.register_with_unit(
            "seal_duration",
            "Time to seal one identity part (encrypt, wrap the data key)",
            Unit::Seconds,
            metrics.seal_seconds.clone(),
        );
        r.register(
            "reidentified",
            "Resources shown with their identity merged back",
            metrics.reidentified.clone(),
        );
        r.register_with_unit(
            "unseal_duration",
            "Time to merge identity back into one answer",
            Unit::Seconds,
            metrics.unseal_seconds.clone(),
        );
        r.register_with_unit(
            "vault_commit_duration",
            "Time of one group commit's vault transaction",
            Unit::Seconds,
            metrics.vault_commit_seconds.clone(),
        );
        r.register_with_unit(
            "vault_flush_duration",
            "Time of one vault flush (durability of a group)",
            Unit::Seconds,
            metrics.vault_flush_seconds.clone(),
        );
        r.register(
            "access_events",
            "Access events written to the outbox",
            metrics.access_events.clone(),
        );
        r.register_with_unit(
            "anchor_finality",
            "Time from submitting an anchoring round's batches to their final block",
            Unit::Seconds,
            metrics.finality_seconds.clone(),
        );
        r.register(
            "outbox_anchors",
            "Anchors waiting in the outbox",
            metrics.pending_anchors.clone(),
        );
        r.register(
            "outbox_access_events",
            "Access events waiting in the outbox",
            metrics.pending_access_events.clone(),
        );
        r.register_with_unit(
            "anchor_lag",
            "How long what waits in the outbox has waited, at most",
            Unit::Seconds,
            metrics.anchor_lag_seconds.clone(),
        );
        r.register(
            "ledger_blocks",
            "Blocks in this node's copy of the chain",
            metrics.ledger_blocks.clone(),
        );
        r.register(
            "ledger_waiting_transactions",
            "Transactions waiting at this node for a block",
            metrics.ledger_waiting.clone(),
        );
        r.register(
            "governance_term",
            "The governance layer's Raft term",
            metrics.governance_term.clone(),
        );
        r.register(
            "governance_leader",
            "1 when this node leads the governance layer",
            metrics.governance_leader.clone(),
        );
        r.register(
            "governance_members",
            "Consortium members, by status",
            metrics.members.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A FHIR request answered.
    pub fn request(&self, interaction: &str, status: u16, took: Duration) {
        let interaction = interaction.to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                interaction: interaction.clone(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&InteractionLabels { interaction })
            .observe(took.as_secs_f64());
    }

    /// A request refused or failed with `reason` (an issue code) and `status`.
    pub fn refusal(&self, reason: &str, status: u16) {
        self.refusals
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
                status,
            })
            .inc();
    }

    /// A request's `parts` identity parts sealed in `took`.
    pub fn sealed(&self, parts: u64, took: Duration) {
        self.seals.inc_by(parts);
        self.seal_seconds.observe(took.as_secs_f64());
    }

    /// An answer with `resources` resources re-identified in `took`.
    pub fn unsealed(&self, resources: u64, took: Duration) {
        self.reidentified.inc_by(resources);
        self.unseal_seconds.observe(took.as_secs_f64());
    }

    /// One group commit's vault transaction.
    pub fn vault_commit(&self, took: Duration) {
        self.vault_commit_seconds.observe(took.as_secs_f64());
    }

    /// One vault flush.
    pub fn vault_flush(&self, took: Duration) {
        self.vault_flush_seconds.observe(took.as_secs_f64());
    }

    /// An access event queued.
    pub fn access_event(&self) {
        self.access_events.inc();
    }

    /// An anchoring round final `took` after its submission.
    pub fn anchored(&self, took: Duration) {
        self.finality_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric, the gauges set from `state`.
    pub fn render(&self, state: &NodeState) -> String {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.pending_anchors.set(signed(state.pending_anchors));
        self.pending_access_events
            .set(signed(state.pending_access_events));
        self.anchor_lag_seconds.set(state.anchor_lag.as_secs_f64());
        self.ledger_blocks.set(signed(state.ledger_blocks));
        self.ledger_waiting.set(signed(state.ledger_waiting));
        self.governance_term.set(signed(state.governance_term));
        self.governance_leader
            .set(i64::from(state.governance_leader));
        for (status, count) in &state.members {
            self.members
                .get_or_create(&StatusLabels {
                    status: status.clone(),
                })
                .set(signed(*count));
        }
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_is_rendered_under_its_name() {
        let metrics = Metrics::new();
        metrics.request("create", 201, Duration::from_millis(12));
        metrics.request("create", 201, Duration::from_millis(30));
        metrics.refusal("forbidden", 403);
        metrics.sealed(2, Duration::from_millis(3));
        metrics.access_event();
        let state = NodeState {
            pending_anchors: 7,
            anchor_lag: Duration::from_millis(1500),
            ledger_blocks: 42,
            governance_term: 3,
            governance_leader: true,
            members: vec![("active".into(), 4), ("revoked".into(), 1)],
            ..NodeState::default()
        };
        let text = metrics.render(&state);
        for line in [
            "fhirseal_requests_total{interaction=\"create\",status=\"201\"} 2",
            "fhirseal_request_duration_seconds_count{interaction=\"create\"} 2",
            "fhirseal_refusals_total{reason=\"forbidden\",status=\"403\"} 1",
            "fhirseal_seals_total 2",
            "fhirseal_access_events_total 1",
            "fhirseal_outbox_anchors 7",
            "fhirseal_anchor_lag_seconds 1.5",
            "fhirseal_ledger_blocks 42",
            "fhirseal_governance_term 3",
            "fhirseal_governance_leader 1",
            "fhirseal_governance_members{status=\"active\"} 4",
            "fhirseal_governance_members{status=\"revoked\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
