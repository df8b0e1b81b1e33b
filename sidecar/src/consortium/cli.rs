//! `fhirseal consortium …`: found a consortium, ask to join it, run a node, and the regulator's
//! and members' commands, each signed here with the member's key and sent to its own node.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use fhirseal_consensus::governance::{
    Admission, Command, MemberKind, RaftRole, SignedCommand, Validity,
};
use fhirseal_consensus::Timestamp;
use http::Method;

use crate::consortium::api::{
    DeskInfo, InviteRequest, JoinAnswer, PendingJoin, Status, SubmitAnswer,
};
use crate::consortium::desk::{token_hash, INVITE_HEADER};
use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::{
    certificate_in, fingerprint, hex, new_link_key, parse_fingerprint, parse_kind,
    promote_rotation, read_link_key, store_link_key, wrap_link_key, write_new, Layout,
    MemberSecrets, NodeConfig, RaftTiming, TrustFile,
};
use crate::consortium::transport::Channel;
use crate::consortium::trust::{Identity, Peer, PeerVerifier, Trust};

/// How long the CLI waits for its node.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How long before its signing a command may be applied: room for a leader whose clock is
/// behind the signer's.
pub const WINDOW_BEFORE: Duration = Duration::from_secs(60);
/// How long after its signing a command may still be applied: room for the CLI's wait, a
/// forwarding and a change of leader, and no more, so that a command held back is refused.
pub const WINDOW_AFTER: Duration = Duration::from_secs(10 * 60);
/// How long the genesis commands `init` signs stay valid: the node submits them when it first
/// leads, which may be a while after `init`.
pub const GENESIS_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The wall clock, in the ledger's milliseconds.
pub fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

/// The window of a command signed at `now` and submitted at once: [`WINDOW_BEFORE`] before it
/// to [`WINDOW_AFTER`] after.
pub fn command_window(now: Timestamp) -> Validity {
    window(now, WINDOW_BEFORE, WINDOW_AFTER)
}

fn window(now: Timestamp, before: Duration, after: Duration) -> Validity {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Validity::around(now, ms(before), ms(after))
}

/// `fhirseal consortium`.
#[derive(Debug, Subcommand)]
pub enum ConsortiumCommand {
    /// The regulator founds a consortium: makes its keys and certificate, the link key, and the
    /// signed genesis in DIR. Start the node with `fhirseal consortium node --dir DIR`.
    Init(InitArgs),
    /// (regulator) Issues a one-time invite for a member id: prints a token the institution
    /// passes to `join --invite`. Only its hash is kept, at the regulator's node.
    Invite(InviteArgs),
    /// An institution makes its keys in DIR and sends a signed join request to the regulator's
    /// join desk at URL (https://host:port), whose certificate is pinned by --pin, with the
    /// invite the regulator gave it.
    Join(JoinArgs),
    /// Runs the node of DIR (Raft, the mutual-TLS API, the join desk if configured) until
    /// Ctrl-C or SIGTERM.
    Node(DirArg),
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
    Rotate(DirArg),
    /// Lists pending join requests at this node.
    Joins(DirArg),
    /// Shows the consortium as this node sees it: members, voters, leader, term.
    Status(StatusArgs),
}

/// The node's directory.
#[derive(Debug, Args)]
pub struct DirArg {
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Raft timing flags.
#[derive(Debug, Args)]
pub struct TimingArgs {
    /// Leader heartbeat, in milliseconds.
    #[arg(long, default_value_t = RaftTiming::default().heartbeat_ms)]
    pub heartbeat_ms: u64,
    /// Election timeout (lower bound; the upper is twice it), in milliseconds.
    #[arg(long, default_value_t = RaftTiming::default().election_timeout_ms)]
    pub election_timeout_ms: u64,
    /// Build a snapshot every this many log entries.
    #[arg(long, default_value_t = RaftTiming::default().snapshot_every)]
    pub snapshot_every: u64,
}

impl TimingArgs {
    fn timing(&self) -> RaftTiming {
        RaftTiming {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_every: self.snapshot_every,
        }
    }
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The node's directory (must not hold a node yet).
    #[arg(long)]
    pub dir: PathBuf,
    /// The consortium's name.
    #[arg(long)]
    pub consortium: String,
    /// The regulator's member id.
    #[arg(long, default_value = "regulator")]
    pub member: String,
    /// Its display name.
    #[arg(long)]
    pub name: Option<String>,
    /// The regulator node's Raft id.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Where the node listens for members (Raft and the API, mutual TLS).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the join desk listens for applicants.
    #[arg(long)]
    pub join_listen: SocketAddr,
    /// Bits of the RSA key the link key is wrapped for.
    #[arg(long, default_value_t = 3072)]
    pub rsa_bits: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub timing: TimingArgs,
}

/// `invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The member id the invite lets in.
    pub member: String,
    /// The regulator node's directory.
    #[arg(long)]
    pub dir: PathBuf,
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
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// This institution's member id.
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
    /// Where its node listens for members.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Bits of its RSA key.
    #[arg(long, default_value_t = 3072)]
    pub rsa_bits: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub timing: TimingArgs,
}

/// `admit`.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The member to admit.
    pub member: String,
    /// The regulator node's directory.
    #[arg(long)]
    pub dir: PathBuf,
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
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// A command on one member, with a reason.
#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// The member.
    pub member: String,
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
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
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node's directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `command`; returns what to print. `shutdown` stops a node.
pub async fn execute(
    command: ConsortiumCommand,
    shutdown: impl Future<Output = ()>,
) -> Result<String> {
    match command {
        ConsortiumCommand::Init(args) => init(args),
        ConsortiumCommand::Invite(args) => invite(args).await,
        ConsortiumCommand::Join(args) => join(args).await,
        ConsortiumCommand::Node(args) => {
            crate::consortium::node::run(&args.dir, shutdown).await?;
            Ok(String::new())
        }
        ConsortiumCommand::Admit(args) => admit(args).await,
        ConsortiumCommand::Suspend(a) => {
            let mut client = Client::open(&a.dir)?;
            let command = Command::Suspend {
                member: a.member.clone(),
                reason: a.reason,
            };
            client.sign_and_submit(command).await?;
            Ok(format!("{} suspended\n", a.member))
        }
        ConsortiumCommand::Reinstate(a) => {
            let mut client = Client::open(&a.dir)?;
            client
                .sign_and_submit(Command::Reinstate {
                    member: a.member.clone(),
                })
                .await?;
            Ok(format!("{} reinstated\n", a.member))
        }
        ConsortiumCommand::Revoke(a) => {
            let mut client = Client::open(&a.dir)?;
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
            let mut client = Client::open(&a.dir)?;
            client
                .sign_and_submit(Command::SetStake {
                    member: a.member.clone(),
                    stake: a.stake,
                })
                .await?;
            Ok(format!("{} has stake {}\n", a.member, a.stake))
        }
        ConsortiumCommand::Rotate(a) => rotate(&a.dir).await,
        ConsortiumCommand::Joins(a) => {
            let mut client = Client::open(&a.dir)?;
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
            let status = Client::open(&a.dir)?.status().await?;
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

fn fresh_dir(layout: &Layout) -> Result<()> {
    if layout.config().exists() {
        return Err(ConsortiumError::Usage(format!(
            "{} already holds a node",
            layout.dir().display()
        )));
    }
    std::fs::create_dir_all(layout.dir()).map_err(|e| ConsortiumError::file(layout.dir(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(layout.dir(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ConsortiumError::file(layout.dir(), e))?;
    }
    Ok(())
}

fn check_timing(timing: &RaftTiming) -> Result<()> {
    if timing.heartbeat_ms == 0
        || timing.election_timeout_ms <= timing.heartbeat_ms
        || timing.snapshot_every == 0
    {
        return Err(ConsortiumError::Usage(
            "--heartbeat-ms must be above 0 and below --election-timeout-ms; --snapshot-every above 0".into(),
        ));
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<String> {
    let layout = Layout::new(&args.dir);
    let timing = args.timing.timing();
    check_timing(&timing)?;
    fresh_dir(&layout)?;
    let secrets = MemberSecrets::generate(args.rsa_bits)?;
    secrets.write(&layout.keys())?;
    let link_key = new_link_key()?;
    store_link_key(&layout, &link_key)?;
    let keys = secrets.member_keys()?;
    let regulator = Admission {
        id: args.member.clone(),
        name: args.name.clone().unwrap_or_else(|| args.member.clone()),
        kind: MemberKind::Regulator,
        node_id: args.node_id,
        address: args.listen.to_string(),
        raft_role: RaftRole::Voter,
        keys: keys.clone(),
        stake: 0,
        reputation: 0,
    };
    let genesis_window = window(wall_clock(), WINDOW_BEFORE, GENESIS_VALIDITY);
    let genesis = SignedCommand::sign(
        &args.consortium,
        &args.member,
        1,
        genesis_window,
        Command::Genesis { regulator },
        &secrets.signing,
    );
    let wrap = SignedCommand::sign(
        &args.consortium,
        &args.member,
        2,
        genesis_window,
        Command::WrapLinkKey {
            version: 1,
            wrapped: vec![(
                args.member.clone(),
                wrap_link_key(&link_key, &keys.wrapping_key)?,
            )],
        },
        &secrets.signing,
    );
    for command in [&genesis, &wrap] {
        if !command.is_encodable() {
            return Err(ConsortiumError::Usage(
                "a name, id or address is empty or longer than 256 bytes".into(),
            ));
        }
    }
    let genesis_dir = layout.genesis();
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
    NodeConfig {
        consortium: args.consortium.clone(),
        member: args.member.clone(),
        kind: "regulator".into(),
        node_id: args.node_id,
        listen: args.listen,
        join_listen: Some(args.join_listen),
        raft: timing,
    }
    .create(&layout)?;
    let pin = hex(&secrets.certificate_fingerprint());
    Ok(format!(
        "consortium {} founded in {} (regulator {}, node {})\n\
         start its node:   fhirseal consortium node --dir {}\n\
         institutions join: fhirseal consortium join https://{} --pin {pin} --dir DIR --member ID --listen HOST:PORT\n",
        args.consortium,
        args.dir.display(),
        args.member,
        args.node_id,
        args.dir.display(),
        args.join_listen,
    ))
}

async fn invite(args: InviteArgs) -> Result<String> {
    const MAX_HOURS: u64 = 30 * 24;
    if args.valid_hours == 0 || args.valid_hours > MAX_HOURS {
        return Err(ConsortiumError::Usage(format!(
            "--valid-hours: from 1 to {MAX_HOURS}"
        )));
    }
    let mut client = Client::open(&args.dir)?;
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

async fn join(args: JoinArgs) -> Result<String> {
    let layout = Layout::new(&args.dir);
    let timing = args.timing.timing();
    check_timing(&timing)?;
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
    fresh_dir(&layout)?;

    let regulator = Peer {
        member: "regulator".into(),
        node_id: 0,
    };
    let desk_trust = Trust::pinned(regulator, BTreeSet::from([pin]));
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(desk_trust.clone(), None))
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut channel = Channel::with_config(desk.clone(), &desk_trust, config);
    let (_, body) = channel
        .request(Method::GET, "/join", Vec::new(), CLI_TIMEOUT)
        .await?;
    let info: DeskInfo = serde_json::from_slice(&body).map_err(|e| protocol(&desk, e))?;

    let secrets = MemberSecrets::generate(args.rsa_bits)?;
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

    secrets.write(&layout.keys())?;
    write_new(&layout.join_request(), &request.to_bytes(), false)?;
    TrustFile { peer: answer.trust }.store(&layout)?;
    NodeConfig {
        consortium: info.consortium.clone(),
        member: args.member.clone(),
        kind: args.kind.clone(),
        node_id,
        listen: args.listen,
        join_listen: None,
        raft: timing,
    }
    .create(&layout)?;
    let certificate = hex(&secrets.certificate_fingerprint());
    Ok(format!(
        "join request of {} (node {node_id}) is pending at {desk} for consortium {}\n\
         its certificate: {certificate} (tell the regulator, not through the desk)\n\
         start its node:  fhirseal consortium node --dir {}\n\
         the regulator admits it: fhirseal consortium admit {} --dir REGULATOR_DIR --fingerprint {certificate} [--voter]\n",
        args.member,
        answer.consortium,
        args.dir.display(),
        args.member,
    ))
}

async fn admit(args: AdmitArgs) -> Result<String> {
    let expected = parse_fingerprint(&args.fingerprint).ok_or_else(|| {
        ConsortiumError::Usage(
            "--fingerprint: expected 64 hex digits (the SHA-256 `join` printed)".into(),
        )
    })?;
    let mut client = Client::open(&args.dir)?;
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
    if let Some(link_key) = read_link_key(&client.layout)? {
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

async fn rotate(dir: &std::path::Path) -> Result<String> {
    let mut client = Client::open(dir)?;
    let layout = client.layout.clone();
    if layout.next_keys().exists() {
        // A rotation was interrupted: finish it if the state took the new keys, else start over.
        let next = MemberSecrets::load(&layout.next_keys(), &layout.keys())?;
        let status = client.status().await?;
        let taken = status
            .member(&client.config.member)
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
        &client.config.consortium,
        &client.config.member,
        &next.signing,
    );
    let command = Command::RotateKeys {
        member: client.config.member.clone(),
        keys,
        possession,
    };
    client.sign_and_submit(command).await?;
    promote_rotation(&layout)?;
    Ok(format!(
        "keys of {} rotated; certificate {}\n",
        client.config.member,
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
    config: NodeConfig,
    secrets: MemberSecrets,
    channel: Channel,
}

impl Client {
    /// Opens the node directory `dir`: its configuration and keys, and a channel to its node
    /// that trusts only the node's own certificates.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let layout = Layout::new(dir);
        let config = NodeConfig::load(&layout)?;
        let secrets = MemberSecrets::load(&layout.keys(), &layout.keys())?;
        let mut pinned = BTreeSet::from([secrets.certificate_fingerprint()]);
        if let Some(cert) = certificate_in(&layout.next_keys()) {
            pinned.insert(fingerprint(&cert));
        }
        let own = Peer {
            member: config.member.clone(),
            node_id: config.node_id,
        };
        let trust = Trust::pinned(own, pinned);
        let identity = Identity::new(secrets.certified_key()?);
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let channel = Channel::new(addr.to_string(), &trust, &identity, None)?;
        Ok(Self {
            layout,
            config,
            secrets,
            channel,
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
    /// is an error.
    pub async fn sign_and_submit(&mut self, command: Command) -> Result<()> {
        let last = self
            .status()
            .await?
            .member(&self.config.member)
            .map_or(0, |m| m.last_sequence);
        let signed = SignedCommand::sign(
            &self.config.consortium,
            &self.config.member,
            last + 1,
            command_window(wall_clock()),
            command,
            &self.secrets.signing,
        );
        let answer = self.submit(&signed).await?;
        match answer.code {
            None => Ok(()),
            Some(code) => Err(ConsortiumError::Refused {
                addr: self.channel.addr().to_owned(),
                status: 403,
                message: format!("refused ({code}): {}", answer.error.unwrap_or_default()),
            }),
        }
    }

    /// This member's keys.
    pub fn secrets(&self) -> &MemberSecrets {
        &self.secrets
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
}
