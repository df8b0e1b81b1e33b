//! The ledger's outbound traffic: one queue and one task per member's node, over the consortium's
//! mutual-TLS channels, so that a slow or dead peer never holds the ledger's task up. Consensus
//! messages queued together go in one request; nothing is retried (the engine re-sends its votes
//! on a timer, the anchorer its batches after a while, the driver asks for blocks again). A sync
//! answer comes back to the ledger's task as an input.

use std::collections::BTreeMap;
use std::time::Duration;

use fhirseal_consensus::ledger::{Input, Outbound, Recipients};
use fhirseal_consensus::FinalizedBlock;
use http::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::consortium::transport::HttpNetwork;
use crate::ledger::view::LedgerView;
use crate::ledger::wire::{decode_list, encode_body, encode_list};

/// How long one request of consensus traffic may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a sync request may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Most items waiting for one peer; more are dropped (and sent again by whoever needs them).
const QUEUE: usize = 2048;

/// Something for one peer.
#[derive(Debug)]
enum Outgoing {
    /// An encoded consensus message.
    Message(Vec<u8>),
    /// An encoded block body with its round.
    Body(Vec<u8>),
    /// An encoded finalized block.
    Block(Vec<u8>),
    /// Encoded transactions to submit.
    Submit(Vec<Vec<u8>>),
    /// Ask for finalized blocks from this height.
    Sync(u64),
}

struct Peer {
    address: String,
    node_id: u64,
    queue: mpsc::Sender<Outgoing>,
}

/// The ledger's peers. Owned by the ledger's task.
pub(crate) struct Net {
    network: Option<HttpNetwork>,
    member: String,
    peers: BTreeMap<String, Peer>,
    /// Where sync answers go.
    inbox: mpsc::Sender<Input>,
    /// Round-robin over the members asked for blocks.
    next_sync: usize,
}

impl Net {
    /// The peers of member `member`'s node, over `network` (`None`: a node without the
    /// consortium's transport, which sends nothing), answers going to `inbox`.
    pub(crate) fn new(
        network: Option<HttpNetwork>,
        member: String,
        inbox: mpsc::Sender<Input>,
    ) -> Self {
        Self {
            network,
            member,
            peers: BTreeMap::new(),
            inbox,
            next_sync: 0,
        }
    }

    /// Sends `message` to `to`.
    pub(crate) fn send(&mut self, to: &Recipients, message: &Outbound, view: &LedgerView) {
        let members: Vec<String> = match to {
            Recipients::Members(members) => members.clone(),
            Recipients::AllExcept(except) => view
                .members
                .keys()
                .filter(|m| !except.contains(m))
                .cloned()
                .collect(),
        };
        if members.iter().all(|m| *m == self.member) {
            return;
        }
        let item = || match message {
            Outbound::Message(m) => Outgoing::Message(m.to_bytes()),
            Outbound::Body(block, round) => Outgoing::Body(encode_body(block, *round)),
            Outbound::Block(block) => Outgoing::Block(block.to_bytes()),
        };
        for member in members {
            self.enqueue(&member, item(), view);
        }
    }

    /// Submits encoded transactions to `members`' nodes.
    pub(crate) fn submit(
        &mut self,
        members: &[String],
        transactions: &[Vec<u8>],
        view: &LedgerView,
    ) {
        for member in members {
            self.enqueue(member, Outgoing::Submit(transactions.to_vec()), view);
        }
    }

    /// Asks `from` (or the next member in turn) for finalized blocks from `height`.
    pub(crate) fn sync(&mut self, from: Option<String>, height: u64, view: &LedgerView) {
        let member = match from {
            Some(m) => m,
            None => {
                let others: Vec<&String> =
                    view.members.keys().filter(|m| **m != self.member).collect();
                if others.is_empty() {
                    return;
                }
                self.next_sync = self.next_sync.wrapping_add(1);
                others[self.next_sync % others.len()].clone()
            }
        };
        self.enqueue(&member, Outgoing::Sync(height), view);
    }

    fn enqueue(&mut self, member: &str, item: Outgoing, view: &LedgerView) {
        if member == self.member {
            return;
        }
        let Some(network) = &self.network else {
            return;
        };
        let Some(node) = view.members.get(member) else {
            return;
        };
        let current = self.peers.get(member).is_some_and(|p| {
            p.address == node.address && p.node_id == node.node_id && !p.queue.is_closed()
        });
        if !current {
            let channel = match network.channel(&node.address, node.node_id) {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!(%member, %error, "no channel to a member's node");
                    return;
                }
            };
            let (queue, items) = mpsc::channel(QUEUE);
            tokio::spawn(peer_task(
                member.to_owned(),
                channel,
                items,
                self.inbox.clone(),
            ));
            self.peers.insert(
                member.to_owned(),
                Peer {
                    address: node.address.clone(),
                    node_id: node.node_id,
                    queue,
                },
            );
        }
        if let Some(peer) = self.peers.get(member) {
            if peer.queue.try_send(item).is_err() {
                tracing::debug!(%member, "the queue to a member's node is full; an item dropped");
            }
        }
    }
}

/// Sends what is queued for one peer, in order, consensus messages in batches.
async fn peer_task(
    member: String,
    mut channel: crate::consortium::transport::Channel,
    mut items: mpsc::Receiver<Outgoing>,
    inbox: mpsc::Sender<Input>,
) {
    while let Some(first) = items.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match items.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut messages: Vec<Vec<u8>> = Vec::new();
        for item in batch {
            if let Outgoing::Message(bytes) = item {
                messages.push(bytes);
                continue;
            }
            send_messages(&member, &mut channel, &mut messages).await;
            match item {
                Outgoing::Message(_) => {}
                Outgoing::Body(bytes) => post(&member, &mut channel, "/bft/block", bytes).await,
                Outgoing::Block(bytes) => post(&member, &mut channel, "/ledger/block", bytes).await,
                Outgoing::Submit(transactions) => {
                    post(
                        &member,
                        &mut channel,
                        "/ledger/submit",
                        encode_list(transactions),
                    )
                    .await;
                }
                Outgoing::Sync(height) => {
                    if let Some(blocks) = sync(&member, &mut channel, height).await {
                        let input = Input::Blocks {
                            from: Some(member.clone()),
                            blocks,
                        };
                        if inbox.send(input).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        send_messages(&member, &mut channel, &mut messages).await;
    }
}

async fn send_messages(
    member: &str,
    channel: &mut crate::consortium::transport::Channel,
    messages: &mut Vec<Vec<u8>>,
) {
    if messages.is_empty() {
        return;
    }
    let body = encode_list(std::mem::take(messages));
    post(member, channel, "/bft/messages", body).await;
}

async fn post(
    member: &str,
    channel: &mut crate::consortium::transport::Channel,
    path: &str,
    body: Vec<u8>,
) {
    match channel.call(Method::POST, path, body, SEND_TIMEOUT).await {
        Ok((status, _)) if status.is_success() => {}
        Ok((status, answer)) => tracing::debug!(
            %member,
            path,
            %status,
            answer = %String::from_utf8_lossy(&answer),
            "a member's node refused ledger traffic"
        ),
        Err(error) => tracing::debug!(%member, path, %error, "ledger traffic not delivered"),
    }
}

async fn sync(
    member: &str,
    channel: &mut crate::consortium::transport::Channel,
    height: u64,
) -> Option<Vec<FinalizedBlock>> {
    let path = format!("/ledger/sync?from={height}");
    let (status, body) = match channel
        .call(Method::GET, &path, Vec::new(), SYNC_TIMEOUT)
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(%member, %error, "no blocks from a member's node");
            return None;
        }
    };
    if status != StatusCode::OK {
        return None;
    }
    let blocks = decode_list(&body)?
        .into_iter()
        .map(FinalizedBlock::from_bytes)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    (!blocks.is_empty()).then_some(blocks)
}
