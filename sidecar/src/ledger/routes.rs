//! The ledger's routes on the consortium's mutual-TLS listener (see [`crate::ledger::wire`] for
//! the bodies). The listener has checked the peer's certificate against the governance state and
//! names its member; what a member may send is the driver's to check (a consensus message only
//! from a delegate of its height, a vote or proposal only under the sender's own delegate key, a
//! block only with a certificate of its epoch's delegates).

use std::time::Duration;

use bytes::Bytes;
use fhirseal_consensus::bft::ConsensusMessage;
use fhirseal_consensus::ledger::Input;
use fhirseal_consensus::{ChainReader, FinalizedBlock, Submitted, Transaction};
use http::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};

use crate::ledger::runtime::Command;
use crate::ledger::wire::{decode_body, decode_list, encode_list, SYNC_BLOCKS};

/// How long a submission waits for the ledger's task.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the routes hand the ledger's task, and the chain they read.
#[derive(Debug, Clone)]
pub struct LedgerPort {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) inputs: mpsc::Sender<Input>,
    pub(crate) reader: ChainReader,
    /// The ledger task's status (its driver, the election as of the tip).
    pub(crate) runtime: tokio::sync::watch::Receiver<crate::ledger::runtime::RuntimeStatus>,
}

/// A route's answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Whether the body is JSON (else octets).
    pub json: bool,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    fn status(status: StatusCode) -> Self {
        Self {
            status,
            json: true,
            body: Bytes::from_static(b"{}"),
        }
    }

    fn error(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            json: true,
            body: crate::error::json_error_body(message),
        }
    }
}

/// Whether `path` is one of the ledger's routes.
pub fn is_ledger_route(path: &str) -> bool {
    matches!(
        path,
        "/bft/messages" | "/bft/block" | "/ledger/block" | "/ledger/submit" | "/ledger/sync"
    )
}

impl LedgerPort {
    /// The election as of the ledger's tip, with the delegates of the height being decided,
    /// when the chain has one.
    pub fn election(
        &self,
    ) -> Option<(
        std::sync::Arc<fhirseal_consensus::ledger::ElectionTracker>,
        Vec<String>,
    )> {
        let status = self.runtime.borrow();
        let tracker = status.election.clone()?;
        let delegates = status
            .driver
            .as_ref()
            .map(|d| d.delegates.clone())
            .unwrap_or_default();
        Some((tracker, delegates))
    }

    /// Answers `member`'s node's request.
    pub async fn answer(
        &self,
        member: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> Answer {
        match (method, path) {
            (&Method::POST, "/bft/messages") => {
                let Some(items) = decode_list(&body) else {
                    return Answer::error(StatusCode::BAD_REQUEST, "not a list of messages");
                };
                for item in items {
                    match ConsensusMessage::from_bytes(item) {
                        Ok(message) => self.input(Input::Message {
                            from: member.to_owned(),
                            message,
                        }),
                        Err(e) => {
                            return Answer::error(
                                StatusCode::BAD_REQUEST,
                                &format!("a consensus message: {e}"),
                            )
                        }
                    }
                }
                Answer::status(StatusCode::ACCEPTED)
            }
            (&Method::POST, "/bft/block") => match decode_body(&body) {
                Some((block, round)) => {
                    self.input(Input::Body {
                        from: member.to_owned(),
                        block,
                        round,
                    });
                    Answer::status(StatusCode::ACCEPTED)
                }
                None => Answer::error(StatusCode::BAD_REQUEST, "not a block body"),
            },
            (&Method::POST, "/ledger/block") => match FinalizedBlock::from_bytes(&body) {
                Ok(block) => {
                    self.input(Input::Blocks {
                        from: Some(member.to_owned()),
                        blocks: vec![block],
                    });
                    Answer::status(StatusCode::ACCEPTED)
                }
                Err(e) => Answer::error(StatusCode::BAD_REQUEST, &format!("a block: {e}")),
            },
            (&Method::POST, "/ledger/submit") => self.submit(&body).await,
            (&Method::GET, "/ledger/sync") => self.sync(query).await,
            _ => Answer::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    /// Hands an input to the ledger's task; dropped when its queue is full (consensus traffic is
    /// sent again, blocks are asked for again).
    fn input(&self, input: Input) {
        if self.inputs.try_send(input).is_err() {
            tracing::debug!("the ledger's input queue is full; an input dropped");
        }
    }

    async fn submit(&self, body: &[u8]) -> Answer {
        let Some(items) = decode_list(body) else {
            return Answer::error(StatusCode::BAD_REQUEST, "not a list of transactions");
        };
        let transactions = match items
            .into_iter()
            .map(Transaction::from_bytes)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(t) => t,
            Err(e) => {
                return Answer::error(StatusCode::BAD_REQUEST, &format!("a transaction: {e}"))
            }
        };
        let (reply, answer) = oneshot::channel();
        let command = Command::Submit {
            transactions,
            forward: false,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "the ledger is not running");
        }
        let answers = match tokio::time::timeout(SUBMIT_TIMEOUT, answer).await {
            Ok(Ok(answers)) => answers,
            _ => {
                return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "the ledger did not answer")
            }
        };
        let json: Vec<serde_json::Value> = answers
            .into_iter()
            .map(|a| match a {
                Ok(Submitted::Queued) => serde_json::json!({"submitted": "queued"}),
                Ok(Submitted::AlreadyPending) => serde_json::json!({"submitted": "pending"}),
                Ok(Submitted::AlreadyAnchored(at)) => {
                    serde_json::json!({"submitted": "anchored", "height": at.height})
                }
                Err(refusal) => serde_json::json!({
                    "error": refusal.message,
                    "retryable": refusal.retryable,
                }),
            })
            .collect();
        Answer {
            status: StatusCode::OK,
            json: true,
            body: Bytes::from(serde_json::Value::Array(json).to_string()),
        }
    }

    async fn sync(&self, query: Option<&str>) -> Answer {
        let from = query
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("from="))
            .and_then(|v| v.parse::<u64>().ok());
        let Some(from) = from else {
            return Answer::error(StatusCode::BAD_REQUEST, "sync takes from=HEIGHT");
        };
        let reader = self.reader.clone();
        let blocks =
            tokio::task::spawn_blocking(move || reader.blocks_from(from, SYNC_BLOCKS)).await;
        match blocks {
            Ok(Ok(blocks)) => Answer {
                status: StatusCode::OK,
                json: false,
                body: Bytes::from(encode_list(blocks.iter().map(FinalizedBlock::to_bytes))),
            },
            Ok(Err(e)) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}
