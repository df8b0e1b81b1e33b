//! `fhirseal consortium …`: found a consortium, ask to join one, and the regulator's and
//! members' commands, each signed here with the member's key and sent to its own running node
//! (`fhirseal run` with the same configuration and data directory).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fhirseal_consensus::governance::{
    Admission, Command, ElectionParams, MemberKind, RaftRole, SignedCommand,
};
use fhirseal_storage::keys::read_link_key;
use http::Method;

use crate::config::Config;
use crate::consortium::api::{
    DeskInfo, InviteRequest, JoinAnswer, PendingJoin, Status, SubmitAnswer,
};
use crate::consortium::desk::{token_hash, INVITE_HEADER};
use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::{
    certificate_in, fingerprint, hex, parse_fingerprint, parse_kind, promote_rotation,
    wrap_link_key, write_new, Layout, MemberSecrets, Membership, TrustFile,
};
use crate::consortium::founding::{found, Founding};
use crate::consortium::transport::Channel;
use crate::consortium::trust::{Identity, Peer, PeerVerifier, Trust};
pub use crate::consortium::window::{
    command_window, wall_clock, window, GENESIS_VALIDITY, WINDOW_AFTER, WINDOW_BEFORE,
};
use crate::keystore::Keystore;

/// How long the CLI waits for its node.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// `fhirseal consortium`.
#[derive(Debug, Subcommand)]
pub enum ConsortiumCommand {
    /// The regulator founds a consortium: makes the node's keys (if it has none yet), the link
    /// key, and the signed genesis in its data directory. Then start the node: `fhirseal run`.
    /// (On the embedded default the first `fhirseal run` founds a consortium of one itself.)
    Init(InitArgs),
    /// (regulator) Issues a one-time invite for a member id: prints a token the institution
    /// passes to `join --invite`. Only its hash is kept, at the regulator's node.
    Invite(InviteArgs),
    /// An institution makes its node's keys and sends a signed join request to the
    /// regulator's join desk at URL (https://host:port), whose certificate is pinned by --pin,
    /// with the invite the regulator gave it. Run before the node's first start: a node that
    /// ran alone founded a consortium of its own. Then start the node (`fhirseal run`): it
    /// answers writes 503 until it is admitted and the link key has reached it.
    Join(JoinArgs),
    /// (regulator) Admits a member whose join request is pending at this node (or given by
    /// --request), if the request names the certificate --fingerprint says, and wraps the
    /// link key for it.
    Admit(AdmitArgs),
    /// (regulator) Suspends a member: its node is cut off until reinstated.
    Suspend(ReasonArgs),
    /// (regulator) Reinstates a suspended member.
    Reinstate(MemberArgs),
    /// (regulator) Revokes a member for good: its certificate goes on the revocation list and
    /// its node is cut off at once.
    Revoke(ReasonArgs),
    /// (regulator) Sets a member's stake.
    Stake(StakeArgs),
    /// Rotates this member's signing, vote and TLS keys (the old certificate is revoked).
    Rotate(NodeArgs),
    /// Lists pending join requests at this node.
    Joins(NodeArgs),
    /// Shows the consortium as this node sees it: members, voters, leader, term.
    Status(StatusArgs),
}

/// Which node: its configuration (as `fhirseal run` takes it) and data directory.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file.
    #[arg(long, short, env = "FHIRSEAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's data directory (default: the configuration's `data_dir`).
    #[arg(long, visible_alias = "dir")]
    pub data_dir: Option<PathBuf>,
}

impl NodeArgs {
    /// The node's configuration: defaults, the file, the environment read through `env`, then
    /// `--data-dir`; checked.
    pub fn load(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut config = Config::layered(self.config.as_deref(), env)?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// The consortium's name.
    #[arg(long)]
    pub consortium: String,
    /// The regulator's member id (its institution on the ledger).
    #[arg(long, default_value = "regulator")]
    pub member: String,
    /// Its display name.
    #[arg(long)]
    pub name: Option<String>,
    /// The regulator node's Raft id.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Where the other members reach the node (Raft and the API, mutual TLS); it listens there
    /// unless `consortium.listen` says otherwise.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the join desk listens for applicants (`consortium.join_listen` overrides it).
    #[arg(long)]
    pub join_listen: Option<SocketAddr>,
    /// Bits of the RSA key, if the node has none yet (default: `seal.rsa_bits`).
    #[arg(long)]
    pub rsa_bits: Option<usize>,
    /// K: how many delegates finalize the shared ledger, the active members with the highest
    /// stake (default: `ledger.delegates`, 4).
    #[arg(long)]
    pub delegates: Option<u32>,
    /// E: blocks per election epoch, at least 3, fixed for the consortium's life; 0: no
    /// election, the delegates are the K active members with the highest stake.
    #[arg(long, default_value_t = ElectionParams::NONE.epoch_blocks)]
    pub epoch_blocks: u64,
    /// M: epochs in a row an elected delegate may serve before it sits one out (at least 1).
    #[arg(long, default_value_t = ElectionParams::NONE.max_consecutive)]
    pub max_terms: u32,
}

/// `invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The member id the invite lets in.
    pub member: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// How long the invite stays valid, in hours (at most 720).
    #[arg(long, default_value_t = 24)]
    pub valid_hours: u64,
}

/// `join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The regulator's join desk, https://host:port.
    pub url: String,
    /// SHA-256 (hex) of the regulator node's certificate, as `init` printed it.
    #[arg(long)]
    pub pin: String,
    /// The one-time invite token the regulator gave this institution (`consortium invite`);
    /// the desk refuses a request without a valid one.
    #[arg(long)]
    pub invite: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// This institution's member id (its institution on the ledger).
    #[arg(long)]
    pub member: String,
    /// Its display name.
    #[arg(long)]
    pub name: Option<String>,
    /// hospital or provider.
    #[arg(long, default_value = "hospital")]
    pub kind: String,
    /// The Raft id its node asks for (random if not given).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Where the other members reach its node; it listens there unless `consortium.listen`
    /// says otherwise.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Bits of its RSA key, if the node has none yet (default: `seal.rsa_bits`).
    #[arg(long)]
    pub rsa_bits: Option<usize>,
}

/// `admit`.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The member to admit.
    pub member: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// SHA-256 (hex) of the applicant's certificate, as `join` printed it to the applicant and
    /// `joins` lists it: told by the institution out of band, so that the request admitted is
    /// the institution's and not another one posted under its name.
    #[arg(long)]
    pub fingerprint: String,
    /// Its node votes in Raft (else it is a learner).
    #[arg(long)]
    pub voter: bool,
    /// Its stake.
    #[arg(long, default_value_t = 0)]
    pub stake: u64,
    /// Its starting reputation.
    #[arg(long, default_value_t = 0)]
    pub reputation: u64,
    /// Admit the request in this file (an applicant's `join-request.cmd`) rather than a
    /// pending one.
    #[arg(long)]
    pub request: Option<PathBuf>,
}

/// A command on one member.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// The member.
    pub member: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
}

/// A command on one member, with a reason.
#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// The member.
    pub member: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// Why, for the record.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `stake`.
#[derive(Debug, Args)]
pub struct StakeArgs {
    /// The member.
    pub member: String,
    /// The new stake.
    pub stake: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `command` on the node its arguments name, whose configuration is read with `env` (the
/// process environment, or a map in tests); returns what to print.
pub async fn execute(
    command: ConsortiumCommand,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    match command {
        ConsortiumCommand::Init(args) => init(args, env),
        ConsortiumCommand::Invite(args) => invite(args, env).await,
        ConsortiumCommand::Join(args) => join(args, env).await,
        ConsortiumCommand::Admit(args) => admit(args, env).await,
        ConsortiumCommand::Suspend(a) => {
            let mut client = Client::open(&a.node.load(env)?)?;
            let command = Command::Suspend {
                member: a.member.clone(),
                reason: a.reason,
            };
            client.sign_and_submit(command).await?;
            Ok(format!("{} suspended\n", a.member))
        }
        ConsortiumCommand::Reinstate(a) => {
            let mut client = Client::open(&a.node.load(env)?)?;
            client
                .sign_and_submit(Command::Reinstate {
                    member: a.member.clone(),
                })
                .await?;
            Ok(format!("{} reinstated\n", a.member))
        }
        ConsortiumCommand::Revoke(a) => {
            let mut client = Client::open(&a.node.load(env)?)?;
            let command = Command::Revoke {
                member: a.member.clone(),
                reason: a.reason,
            };
            client.sign_and_submit(command).await?;
            Ok(format!(
                "{} revoked: its certificate is on the revocation list\n",
                a.member
            ))
        }
        ConsortiumCommand::Stake(a) => {
            let mut client = Client::open(&a.node.load(env)?)?;
            client
                .sign_and_submit(Command::SetStake {
                    member: a.member.clone(),
                    stake: a.stake,
                })
                .await?;
            Ok(format!("{} has stake {}\n", a.member, a.stake))
        }
        ConsortiumCommand::Rotate(a) => rotate(&a.load(env)?).await,
        ConsortiumCommand::Joins(a) => {
            let mut client = Client::open(&a.load(env)?)?;
            let (_, body) = client
                .channel
                .request(Method::GET, "/consortium/joins", Vec::new(), CLI_TIMEOUT)
                .await?;
            let pending: Vec<PendingJoin> =
                serde_json::from_slice(&body).map_err(|e| client.protocol(e))?;
            let mut out = String::new();
            for p in pending {
                out.push_str(&format!(
                    "{} ({}, {}) node {} at {}, certificate {}\n",
                    p.id, p.name, p.kind, p.node_id, p.address, p.certificate
                ));
            }
            Ok(out)
        }
        ConsortiumCommand::Status(a) => {
            let status = Client::open(&a.node.load(env)?)?.status().await?;
            if a.json {
                serde_json::to_string_pretty(&status)
                    .map(|s| s + "\n")
                    .map_err(|e| ConsortiumError::Usage(e.to_string()))
            } else {
                Ok(status.render())
            }
        }
    }
}

/// Refuses a node that already belongs to a consortium; makes its data directory (0700).
fn fresh_node(layout: &Layout, config: &Config) -> Result<()> {
    if Membership::load(layout)?.is_some() {
        return Err(ConsortiumError::Usage(format!(
            "{} already holds a node of a consortium",
            config.data_dir.display()
        )));
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| ConsortiumError::file(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ConsortiumError::file(dir, e))?;
    }
    std::fs::create_dir_all(layout.dir()).map_err(|e| ConsortiumError::file(layout.dir(), e))
}

fn init(args: InitArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let config = args.node.load(env)?;
    let layout = Layout::of(&config);
    let founding = Founding {
        consortium: args.consortium.clone(),
        member: args.member.clone(),
        name: args.name.clone().unwrap_or_else(|| args.member.clone()),
        node_id: args.node_id,
        address: args.listen,
        join_listen: args.join_listen,
        delegates: args.delegates.unwrap_or(config.ledger.delegates),
        election: ElectionParams {
            epoch_blocks: args.epoch_blocks,
            max_consecutive: args.max_terms,
        },
    };
    founding.check()?;
    fresh_node(&layout, &config)?;
    let bits = args.rsa_bits.unwrap_or(config.seal.rsa_bits);
    let keystore = Keystore::open_or_create(&layout.keys(), bits)?;
    found(&layout, &keystore.member, &founding)?;
    let pin = hex(&keystore.member.certificate_fingerprint());
    let desk = args.join_listen.map_or_else(
        || "DESK (set consortium.join_listen)".to_owned(),
        |d| d.to_string(),
    );
    Ok(format!(
        "consortium {} founded in {} (regulator {}, node {})\n\
         start its node:    fhirseal run --data-dir {}\n\
         institutions join: fhirseal consortium join https://{desk} --pin {pin} --data-dir DIR --member ID --listen HOST:PORT\n",
        args.consortium,
        config.data_dir.display(),
        args.member,
        args.node_id,
        config.data_dir.display(),
    ))
}

async fn invite(args: InviteArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    const MAX_HOURS: u64 = 30 * 24;
    if args.valid_hours == 0 || args.valid_hours > MAX_HOURS {
        return Err(ConsortiumError::Usage(format!(
            "--valid-hours: from 1 to {MAX_HOURS}"
        )));
    }
    let mut client = Client::open(&args.node.load(env)?)?;
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).map_err(|e| ConsortiumError::Keys(e.to_string()))?;
    let token = zeroize::Zeroizing::new(hex(secret.as_ref()));
    let expires_at = wall_clock()
        .0
        .saturating_add(args.valid_hours * 60 * 60 * 1000);
    let request = InviteRequest {
        member: args.member.clone(),
        token_sha256: hex(&token_hash(&token)),
        expires_at,
    };
    let body = serde_json::to_vec(&request).map_err(|e| ConsortiumError::Usage(e.to_string()))?;
    client
        .channel
        .request(Method::POST, "/consortium/invites", body, CLI_TIMEOUT)
        .await?;
    Ok(format!(
        "one-time invite for {} (valid {} h; the node keeps only its hash):\n{}\n\
         the institution joins with: fhirseal consortium join https://DESK --pin PIN --invite TOKEN --member {} ...\n",
        args.member,
        args.valid_hours,
        token.as_str(),
        args.member,
    ))
}

async fn join(args: JoinArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let config = args.node.load(env)?;
    let layout = Layout::of(&config);
    let kind = parse_kind(&args.kind).map_err(ConsortiumError::Usage)?;
    if kind == MemberKind::Regulator {
        return Err(ConsortiumError::Usage(
            "there is one regulator; join as hospital or provider".into(),
        ));
    }
    let pin = parse_fingerprint(&args.pin).ok_or_else(|| {
        ConsortiumError::Usage("--pin: expected 64 hex digits (the SHA-256 `init` printed)".into())
    })?;
    let desk = args
        .url
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/').to_owned())
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| {
            ConsortiumError::Usage(format!("{}: expected https://host:port", args.url))
        })?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| ConsortiumError::Keys(e.to_string()))?;
            // Kept below 2^53 so that every JSON reader reads it exactly.
            u64::from_le_bytes(bytes) >> 11
        }
    };
    fresh_node(&layout, &config)?;

    let regulator = Peer {
        member: "regulator".into(),
        node_id: 0,
    };
    let desk_trust = Trust::pinned(regulator, BTreeSet::from([pin]));
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(desk_trust.clone(), None))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let mut channel = Channel::with_config(desk.clone(), &desk_trust, tls);
    let (_, body) = channel
        .request(Method::GET, "/join", Vec::new(), CLI_TIMEOUT)
        .await?;
    let info: DeskInfo = serde_json::from_slice(&body).map_err(|e| protocol(&desk, e))?;

    // The node's keystore (made now if it has none): the request names its keys.
    let bits = args.rsa_bits.unwrap_or(config.seal.rsa_bits);
    let secrets = Keystore::open_or_create(&layout.keys(), bits)?.member;
    let keys = secrets.member_keys()?;
    let possession = keys.prove_possession(&info.consortium, &args.member, &secrets.signing);
    let admission = Admission {
        id: args.member.clone(),
        name: args.name.clone().unwrap_or_else(|| args.member.clone()),
        kind,
        node_id,
        address: args.listen.to_string(),
        raft_role: RaftRole::Learner,
        keys,
        stake: 0,
        reputation: 0,
    };
    let request = SignedCommand::sign(
        &info.consortium,
        &args.member,
        0,
        command_window(wall_clock()),
        Command::Admit {
            member: admission,
            possession,
        },
        &secrets.signing,
    );
    if !request.is_encodable() {
        return Err(ConsortiumError::Usage(
            "a name, id or address is empty or longer than 256 bytes".into(),
        ));
    }
    let headers: Vec<(&'static str, String)> = args
        .invite
        .iter()
        .map(|token| (INVITE_HEADER, token.trim().to_owned()))
        .collect();
    let answer = channel
        .call_with(
            Method::POST,
            "/join",
            request.to_bytes(),
            &headers,
            CLI_TIMEOUT,
        )
        .await?;
    let (_, body) = channel.answer(answer)?;
    let answer: JoinAnswer = serde_json::from_slice(&body).map_err(|e| protocol(&desk, e))?;

    let join_request = layout.join_request();
    if join_request.exists() {
        // A request made before, never admitted (no membership was written): replaced.
        std::fs::remove_file(&join_request).map_err(|e| ConsortiumError::file(&join_request, e))?;
    }
    write_new(&join_request, &request.to_bytes(), false)?;
    TrustFile { peer: answer.trust }.store(&layout)?;
    Membership {
        consortium: info.consortium.clone(),
        member: args.member.clone(),
        kind: args.kind.clone(),
        node_id,
        address: args.listen,
        join_listen: None,
    }
    .create(&layout)?;
    let certificate = hex(&secrets.certificate_fingerprint());
    Ok(format!(
        "join request of {} (node {node_id}) is pending at {desk} for consortium {}\n\
         its certificate: {certificate} (tell the regulator, not through the desk)\n\
         start its node:  fhirseal run --data-dir {} (writes wait for the admission and the link key)\n\
         the regulator admits it: fhirseal consortium admit {} --data-dir REGULATOR_DIR --fingerprint {certificate} [--voter]\n",
        args.member,
        answer.consortium,
        config.data_dir.display(),
        args.member,
    ))
}

async fn admit(args: AdmitArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let expected = parse_fingerprint(&args.fingerprint).ok_or_else(|| {
        ConsortiumError::Usage(
            "--fingerprint: expected 64 hex digits (the SHA-256 `join` printed)".into(),
        )
    })?;
    let mut client = Client::open(&args.node.load(env)?)?;
    let bytes = match &args.request {
        Some(path) => std::fs::read(path).map_err(|e| ConsortiumError::file(path, e))?,
        None => {
            let path = format!("/consortium/joins/{}", args.member);
            client
                .channel
                .request(Method::GET, &path, Vec::new(), CLI_TIMEOUT)
                .await?
                .1
                .to_vec()
        }
    };
    let request = SignedCommand::from_bytes(&bytes)
        .map_err(|e| ConsortiumError::Usage(format!("not a join request: {e}")))?;
    let Some((member, possession)) = request.join_request() else {
        return Err(ConsortiumError::Usage(
            "the request is not an admission signed with the applicant's own key".into(),
        ));
    };
    let (mut member, possession) = (member.clone(), *possession);
    if member.id != args.member {
        return Err(ConsortiumError::Usage(format!(
            "the request is {}'s, not {}'s",
            member.id, args.member
        )));
    }
    if member.keys.tls_certificate != expected {
        return Err(ConsortiumError::Usage(format!(
            "the request of {} names the certificate {}, not {}: not admitted",
            args.member,
            hex(&member.keys.tls_certificate),
            hex(&expected)
        )));
    }
    member.raft_role = if args.voter {
        RaftRole::Voter
    } else {
        RaftRole::Learner
    };
    member.stake = args.stake;
    member.reputation = args.reputation;
    let wrapping_key = member.keys.wrapping_key.clone();
    client
        .sign_and_submit(Command::Admit { member, possession })
        .await?;
    let mut out = format!(
        "{} admitted as {}\n",
        args.member,
        if args.voter { "voter" } else { "learner" }
    );
    if let Some(link_key) = read_link_key(&client.layout.keys())? {
        let version = client.status().await?.link_key_version.max(1);
        let wrapped = wrap_link_key(&link_key, &wrapping_key)?;
        client
            .sign_and_submit(Command::WrapLinkKey {
                version,
                wrapped: vec![(args.member.clone(), wrapped)],
            })
            .await?;
        out.push_str(&format!(
            "link key v{version} wrapped for {}\n",
            args.member
        ));
    }
    Ok(out)
}

async fn rotate(config: &Config) -> Result<String> {
    let mut client = Client::open(config)?;
    let layout = client.layout.clone();
    if layout.next_keys().exists() {
        // A rotation was interrupted: finish it if the state took the new keys, else start over.
        let next = MemberSecrets::load(&layout.next_keys(), &layout.keys())?;
        let status = client.status().await?;
        let taken = status
            .member(&client.membership.member)
            .is_some_and(|m| m.certificate == hex(&next.certificate_fingerprint()));
        if taken {
            promote_rotation(&layout)?;
            return Ok("an interrupted rotation was completed\n".into());
        }
        std::fs::remove_dir_all(layout.next_keys())
            .map_err(|e| ConsortiumError::file(&layout.next_keys(), e))?;
    }
    let next = client.secrets.rotated()?;
    next.write(&layout.next_keys())?;
    let keys = next.member_keys()?;
    let possession = keys.prove_possession(
        &client.membership.consortium,
        &client.membership.member,
        &next.signing,
    );
    let command = Command::RotateKeys {
        member: client.membership.member.clone(),
        keys,
        possession,
    };
    client.sign_and_submit(command).await?;
    promote_rotation(&layout)?;
    Ok(format!(
        "keys of {} rotated; certificate {}\n",
        client.membership.member,
        hex(&next.certificate_fingerprint())
    ))
}

fn protocol(addr: &str, e: impl std::fmt::Display) -> ConsortiumError {
    ConsortiumError::Protocol {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

/// A member's line to its own node, with its keys to sign commands.
#[derive(Debug)]
pub struct Client {
    layout: Layout,
    membership: Membership,
    secrets: MemberSecrets,
    channel: Channel,
}

impl Client {
    /// Opens the node of `config`: its membership and keys, and a channel to its running node
    /// (at the address the node wrote down, else the configured or admitted one) that trusts
    /// only the node's own certificates.
    pub fn open(config: &Config) -> Result<Self> {
        let layout = Layout::of(config);
        let membership = Membership::require(&layout)?;
        let secrets = MemberSecrets::load(&layout.keys(), &layout.keys())?;
        let mut pinned = BTreeSet::from([secrets.certificate_fingerprint()]);
        if let Some(cert) = certificate_in(&layout.next_keys()) {
            pinned.insert(fingerprint(&cert));
        }
        let own = Peer {
            member: membership.member.clone(),
            node_id: membership.node_id,
        };
        let trust = Trust::pinned(own, pinned);
        let identity = Identity::new(secrets.certified_key()?);
        let mut addr = layout
            .running_address()
            .or(config.consortium.listen.filter(|a| a.port() != 0))
            .unwrap_or(membership.address);
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let channel = Channel::new(addr.to_string(), &trust, &identity, None)?;
        Ok(Self {
            layout,
            membership,
            secrets,
            channel,
        })
    }

    /// [`Client::open`] for the data directory `data_dir` with its keystore in
    /// `data_dir/keys`, configured otherwise by default.
    pub fn open_dir(data_dir: &std::path::Path) -> Result<Self> {
        Self::open(&Config {
            data_dir: data_dir.to_owned(),
            ..Config::default()
        })
    }

    fn protocol(&self, e: impl std::fmt::Display) -> ConsortiumError {
        protocol(self.channel.addr(), e)
    }

    /// The node's status.
    pub async fn status(&mut self) -> Result<Status> {
        let (_, body) = self
            .channel
            .request(Method::GET, "/consortium/status", Vec::new(), CLI_TIMEOUT)
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.protocol(e))
    }

    /// Submits `command` through the node, whatever it is; a refusal is an `Ok` answer here.
    pub async fn submit(&mut self, command: &SignedCommand) -> Result<SubmitAnswer> {
        let (status, body) = self
            .channel
            .call(
                Method::POST,
                "/consortium/submit",
                command.to_bytes(),
                CLI_TIMEOUT,
            )
            .await?;
        match serde_json::from_slice::<SubmitAnswer>(&body) {
            Ok(answer) if answer.outcome == "accepted" || answer.outcome == "refused" => Ok(answer),
            _ => Err(ConsortiumError::Refused {
                addr: self.channel.addr().to_owned(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    /// Signs `command` as this member with the next sequence number and submits it; a refusal
    /// is an error. A command refused as `Replayed` (its sequence number taken meanwhile by
    /// another command of this member: the regulator's node begins epochs on its own) was not
    /// applied, and is signed again with the next number, a few times.
    pub async fn sign_and_submit(&mut self, command: Command) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = self
                .status()
                .await?
                .member(&self.membership.member)
                .map_or(0, |m| m.last_sequence);
            let signed = SignedCommand::sign(
                &self.membership.consortium,
                &self.membership.member,
                last + 1,
                command_window(wall_clock()),
                command.clone(),
                &self.secrets.signing,
            );
            let answer = self.submit(&signed).await?;
            match answer.code {
                None => return Ok(()),
                Some(code) if code == "Replayed" && attempts < 4 => continue,
                Some(code) => {
                    return Err(ConsortiumError::Refused {
                        addr: self.channel.addr().to_owned(),
                        status: 403,
                        message: format!("refused ({code}): {}", answer.error.unwrap_or_default()),
                    })
                }
            }
        }
    }

    /// This member's keys.
    pub fn secrets(&self) -> &MemberSecrets {
        &self.secrets
    }

    /// This node's membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
}
