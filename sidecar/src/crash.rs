//! Points where the process aborts on purpose, for the crash tests and the crash campaign only.
//!
//! `FHIRSEAL_TEST_CRASH_AT=POINT` aborts the process the first time it reaches `POINT`;
//! `FHIRSEAL_TEST_CRASH_AT=POINT:N` the `N`-th time (counted from the start of the process).
//! The abort is `std::process::abort`: no destructor runs, nothing is flushed, no shutdown
//! round anchors what waits, which leaves the data directory as SIGKILL would. Unset, reaching
//! a point reads a `OnceLock` and nothing else.
//!
//! The points, in the order a write meets them:
//!
//! | name             | where                                                                  |
//! |------------------|------------------------------------------------------------------------|
//! | `before-forward` | a write's intents are durable; the upstream has not been sent it       |
//! | `after-upstream` | the upstream answered a write; the vault has not sealed it             |
//! | `after-vault`    | the vault's commit and the outbox entry are durable; the intents are still kept and the client has no answer |
//! | `wal-flushed`    | the ledger's write-ahead log was made durable, mid block production   |
//! | `block-appended` | a block is stored on the chain; neither the anchorer nor the API know  |
//! | `before-clear`   | the anchorer saw its batches final; their outbox entries are not cleared |
//! | `import-sent`    | `fhirseal import`: the node answered a batch; the journal does not record it yet |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub(crate) const CRASH_AT_VAR: &str = "FHIRSEAL_TEST_CRASH_AT";

/// A point where the process may abort on purpose (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// A write's intents are durable; the upstream has not been sent it.
    BeforeForward,
    /// The upstream has stored a write; the vault has not yet sealed it.
    AfterUpstream,
    /// The vault has sealed a write and queued its anchor, durably; the client has no answer.
    AfterVault,
    /// The ledger's write-ahead log has just been made durable.
    WalFlushed,
    /// A block has just been stored on the chain.
    BlockAppended,
    /// The anchorer found its batches final and has not cleared their outbox entries.
    BeforeClear,
    /// `fhirseal import` had a batch answered and has not recorded it in its journal.
    ImportSent,
}

impl CrashPoint {
    /// Every point, in the order a write meets them.
    pub(crate) const ALL: [CrashPoint; 7] = [
        CrashPoint::BeforeForward,
        CrashPoint::AfterUpstream,
        CrashPoint::AfterVault,
        CrashPoint::WalFlushed,
        CrashPoint::BlockAppended,
        CrashPoint::BeforeClear,
        CrashPoint::ImportSent,
    ];

    /// The point's name in `FHIRSEAL_TEST_CRASH_AT`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeForward => "before-forward",
            CrashPoint::AfterUpstream => "after-upstream",
            CrashPoint::AfterVault => "after-vault",
            CrashPoint::WalFlushed => "wal-flushed",
            CrashPoint::BlockAppended => "block-appended",
            CrashPoint::BeforeClear => "before-clear",
            CrashPoint::ImportSent => "import-sent",
        }
    }
}

/// A crash point armed from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashPlan {
    pub(crate) point: CrashPoint,
    /// The time the point is reached that aborts (1 for the first).
    pub(crate) at: u64,
}

/// Why `FHIRSEAL_TEST_CRASH_AT` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CrashPlanError {
    #[error("{CRASH_AT_VAR}: no crash point '{0}' (one of before-forward, after-upstream, after-vault, wal-flushed, block-appended, before-clear, import-sent)")]
    UnknownPoint(String),
    #[error("{CRASH_AT_VAR}: '{0}' is not a count of 1 or more")]
    BadCount(String),
}

impl std::str::FromStr for CrashPlan {
    type Err = CrashPlanError;

    /// `POINT` or `POINT:N`.
    fn from_str(text: &str) -> Result<CrashPlan, CrashPlanError> {
        let (name, count) = match text.split_once(':') {
            Some((name, count)) => (name, Some(count)),
            None => (text, None),
        };
        let point = CrashPoint::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| CrashPlanError::UnknownPoint(name.to_owned()))?;
        let at = match count {
            None => 1,
            Some(count) => count
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| CrashPlanError::BadCount(count.to_owned()))?,
        };
        Ok(CrashPlan { point, at })
    }
}

/// The plan read from the environment once, at the first look.
fn plan() -> &'static Result<Option<CrashPlan>, CrashPlanError> {
    static PLAN: OnceLock<Result<Option<CrashPlan>, CrashPlanError>> = OnceLock::new();
    PLAN.get_or_init(|| match std::env::var(CRASH_AT_VAR) {
        Ok(text) => text.parse().map(Some),
        Err(_) => Ok(None),
    })
}

/// The armed plan, if any; an error when `FHIRSEAL_TEST_CRASH_AT` is set and cannot be read
/// (checked at start, so that a mistyped point fails the start rather than never firing).
pub(crate) fn armed() -> Result<Option<CrashPlan>, CrashPlanError> {
    plan().clone()
}

/// How often the armed point has been reached so far.
static REACHED: AtomicU64 = AtomicU64::new(0);

/// Aborts the process when `point` is the armed one and this is the time it was armed for.
pub(crate) fn reached(point: CrashPoint) {
    let Ok(Some(plan)) = plan() else {
        return;
    };
    if plan.point != point {
        return;
    }
    let time = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if time == plan.at {
        tracing::error!(
            point = point.name(),
            time,
            "{CRASH_AT_VAR}: aborting on purpose"
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_a_point_and_optionally_a_count() {
        assert_eq!(
            "after-upstream".parse(),
            Ok(CrashPlan {
                point: CrashPoint::AfterUpstream,
                at: 1
            })
        );
        assert_eq!(
            "block-appended:17".parse(),
            Ok(CrashPlan {
                point: CrashPoint::BlockAppended,
                at: 17
            })
        );
        for point in CrashPoint::ALL {
            let plan: CrashPlan = format!("{}:2", point.name()).parse().unwrap();
            assert_eq!(plan.point, point);
        }
        assert_eq!(
            "after-upstrem".parse::<CrashPlan>(),
            Err(CrashPlanError::UnknownPoint("after-upstrem".to_owned()))
        );
        for bad in [
            "after-vault:0",
            "after-vault:",
            "after-vault:x",
            "after-vault:-1",
        ] {
            assert!(
                matches!(bad.parse::<CrashPlan>(), Err(CrashPlanError::BadCount(_))),
                "{bad}"
            );
        }
    }
}
