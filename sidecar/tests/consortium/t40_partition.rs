//! A network partition of five voters, with Linux network namespaces: the side without a quorum
//! cannot commit, and once the network is whole again every node agrees.
//!
//! Each node is a real `fhirseal consortium node` process started with `ip netns exec` in a
//! network namespace of its own, listening on its namespace's veth address (`10.77.0.{10 +
//! id}:7000`); its cable runs to a switch (two bridges joined by a trunk) in another namespace
//! (see [`crate::netns`]). Every CLI command runs in the namespace of the node it talks to.
//!
//! Why these servers cannot be reached from outside the machine: nothing is created or bound in
//! the namespace the test runs in (every node, every CLI call and every interface lives in the
//! test's own namespaces); a node's namespace has only its loopback and one veth into the
//! switch, with the connected route of 10.77.0.0/24 and no other route, no default route; the
//! switch's bridges have no address; and no namespace has a device or a cable leading out of
//! this private subnet. No packet can leave it, and nothing outside can send one in.
//!
//! The scenario:
//!
//! 1. the regulator's node leads from the founding; its cable is unplugged until the four others
//!    elect a leader among themselves, then plugged back in, and it follows that leader (so that
//!    the regulator, who signs the majority's command with its own CLI and node, is on the
//!    majority side, and the minority still holds the leader);
//! 2. the leader and one more institution are moved to the switch's second bridge and the trunk
//!    taken down: a minority of two holding the old leader, a majority of three with the
//!    regulator. The majority elects a leader and commits a regulator-signed `SetStake`. On the
//!    minority side both members try to rotate their keys (a `RotateKeys` each, the one command
//!    a non-regulator signs), one at the old leader's node itself and one through the other
//!    node, which forwards it to the old leader; neither commits, and no node applies either;
//! 3. the trunk comes back up: the minority follows the majority's leader and catches up, the
//!    old leader's uncommitted entries are overwritten, and all five nodes report the same
//!    members, stakes, certificates, revocation list and refusals, with the `SetStake` applied
//!    and neither rotation;
//! 4. the forwarded rotation is retried with the CLI (which starts it over with new keys, as it
//!    does after any interrupted rotation): it commits once, everywhere (one revocation of the
//!    old certificate, the member's sequence one higher), and the other is still absent.
//!
//! Prints, as `FIGURE` lines, the time to a new leader after each cut, the majority's commit,
//! how long the minority's submissions took to fail, and the time to catch up after each
//! healing. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; without them it prints one
//! `skipped: …` line and passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirseal_sidecar::consortium::api::Status;
use fhirseal_sidecar::consortium::files::hex;

use crate::netns::Namespaces;
use crate::support::{serial, Cluster, ELECTION_TIMEOUT_MS};

const VOTERS: u64 = 5;
/// The most any wait for an election or a catch-up may take: a bound a healthy cluster meets
/// many times over, not a speed claim.
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_minority_cannot_commit_and_every_node_agrees_after_healing() {
    let _serial = serial();
    let Some(net) = Namespaces::create(VOTERS) else {
        return;
    };
    let net = Arc::new(net);
    let started = Instant::now();
    let cluster = Cluster::found_on(VOTERS, VOTERS, net.clone());
    eprintln!(
        "FIGURE partition: {VOTERS} voters founded in their namespaces in {:?}",
        started.elapsed()
    );
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let reg = cluster.nodes[0].dir().to_owned();

    // 1. The lead moves off the regulator's node.
    let old_leader = move_lead_off_regulator(&cluster, &net);

    // 2. The split: the old leader and one more institution on one side.
    let li = index(&cluster, old_leader);
    let mi = (1..cluster.nodes.len()).find(|i| *i != li).unwrap();
    let minority = [li, mi];
    let majority: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    let before = cluster.agree(&all, "every node to agree before the split")[0].clone();
    assert_eq!(before.raft.leader, Some(old_leader), "the lead moved again");
    let (l_member, m_member) = (
        cluster.nodes[li].member.clone(),
        cluster.nodes[mi].member.clone(),
    );
    let old_stake = before.member("h2").unwrap().stake;
    net.move_to_sw1(&[cluster.nodes[li].node_id, cluster.nodes[mi].node_id]);
    let split_at = Instant::now();
    net.split();
    let (new_leader, elected_in, round) = first_leader(&cluster, &majority, old_leader, split_at);
    eprintln!(
        "FIGURE partition: the majority ({}) elects node {new_leader} {elected_in:?} after the split \
         (old leader node {old_leader} in the minority; election timeout {ELECTION_TIMEOUT_MS}-{} ms, \
         heartbeat 100 ms; polled through the CLI, one round every {round:?})",
        members(&cluster, &majority),
        2 * ELECTION_TIMEOUT_MS
    );
    cluster.wait(&majority, "the majority to follow its leader", |s| {
        s.raft.leader == Some(new_leader)
    });

    // The regulator signs a stake change with its CLI, through its own node: it commits.
    let submitted = Instant::now();
    retry_while_no_leader(&cluster, 0, &["stake", "h2", "111", "--dir", &reg]);
    eprintln!(
        "FIGURE partition: a regulator-signed SetStake commits on the majority side in {:?} (CLI run to its end)",
        submitted.elapsed()
    );
    cluster.wait(&majority, "the stake on the majority side", |s| {
        stake(s) == 111
    });

    // On the minority side, both members try to rotate their keys at once: at the old leader's
    // node, and through the other node, which forwards to the old leader.
    let attempts: Vec<(String, Duration, std::process::Output)> = std::thread::scope(|scope| {
        let handles: Vec<_> = minority
            .iter()
            .map(|i| {
                let node = &cluster.nodes[*i];
                scope.spawn(move || {
                    let tried = Instant::now();
                    let out = node.cli(&["rotate", "--dir", node.dir()]);
                    (node.member.clone(), tried.elapsed(), out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (member, took, out) in &attempts {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{member}'s rotation succeeded in the minority: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The old leader waits for a quorum until the CLI gives up; the follower forwards to
        // it and gives up first, with a 502.
        let at = if *member == l_member {
            assert!(err.contains("timed out"), "{member}: {err}");
            "at the old leader's node"
        } else {
            assert!(
                err.contains("answered 502") && err.contains("forwarding to the leader"),
                "{member}: {err}"
            );
            "through a minority follower"
        };
        eprintln!(
            "FIGURE partition: {member}'s rotation {at} fails after {took:?}: {}",
            err.trim()
        );
    }

    // Neither rotation is applied anywhere, and the minority has not seen the stake.
    let during: Vec<Status> = all.iter().map(|i| cluster.nodes[*i].status()).collect();
    for s in &during {
        unchanged(s, &before, &[&l_member, &m_member]);
        assert_eq!(s.revoked_certificates, before.revoked_certificates);
    }
    // The old leader did take both rotations into its log (openraft 0.9's leader does not step
    // down without a quorum), so healing has uncommitted entries to overwrite.
    let l = &during[li];
    assert_eq!(
        (l.raft.state.as_str(), l.raft.leader),
        ("Leader", Some(old_leader))
    );
    assert!(
        l.raft.last_log_index >= l.raft.last_applied.map(|a| a + 2),
        "the old leader's log holds no uncommitted rotations: {:?}",
        l.raft
    );
    for i in minority {
        let s = &during[i];
        assert_eq!(
            stake(s),
            old_stake,
            "{} applied the majority's stake",
            s.node.member
        );
        eprintln!(
            "FIGURE partition: minority node {} ({}) during the split: {}, leader {:?}, term {}, last log {:?}, applied {:?}",
            s.node.node_id,
            s.node.member,
            s.raft.state,
            s.raft.leader,
            s.raft.term,
            s.raft.last_log_index,
            s.raft.last_applied
        );
    }

    // 3. Healing: the minority catches up, and every node agrees.
    let mended_at = Instant::now();
    net.mend();
    let caught_up = until_each(&cluster, &minority, "the minority to catch up", |s| {
        s.raft.leader == Some(new_leader) && stake(s) == 111
    });
    for (i, took) in minority.iter().zip(&caught_up) {
        eprintln!(
            "FIGURE partition: minority node {} follows node {new_leader} and has the stake {took:?} after healing",
            cluster.nodes[*i].node_id
        );
    }
    let healed = cluster.agree(&all, "every node to agree after healing");
    eprintln!(
        "FIGURE partition: all {VOTERS} nodes agree {:?} after healing",
        mended_at.elapsed()
    );
    for s in &healed {
        assert_eq!(stake(s), 111, "{}", s.node.member);
        assert_eq!(s.raft.leader, Some(new_leader));
        assert_eq!(s.raft.voters.len(), usize::try_from(VOTERS).unwrap());
        unchanged(s, &before, &[&l_member, &m_member]);
        assert_eq!(s.revoked_certificates, before.revoked_certificates);
        assert_eq!(s.refusals, before.refusals);
        // The regulator signed exactly one command since: the stake.
        assert_eq!(
            s.member("regulator").unwrap().last_sequence,
            before.member("regulator").unwrap().last_sequence + 1
        );
    }

    // 4. The forwarded rotation, retried: it commits exactly once, everywhere.
    let m_old = before.member(&m_member).unwrap().certificate.clone();
    cluster.nodes[mi].ok(&["rotate", "--dir", cluster.nodes[mi].dir()]);
    let m_new = hex(&cluster.nodes[mi].secrets().certificate_fingerprint());
    assert_ne!(m_new, m_old);
    cluster.wait(&all, "the retried rotation everywhere", |s| {
        s.member(&m_member).is_some_and(|m| m.certificate == m_new)
    });
    let rotated = cluster.agree(&all, "every node to agree after the rotation");
    for s in &rotated {
        let m = s.member(&m_member).unwrap();
        assert_eq!(m.certificate, m_new);
        assert_eq!(
            m.last_sequence,
            before.member(&m_member).unwrap().last_sequence + 1,
            "{m_member}'s rotation applied more than once on {}",
            s.node.member
        );
        // One more revocation, of the certificate rotated away; the earlier ones kept.
        let added: Vec<_> = s
            .revoked_certificates
            .iter()
            .filter(|r| !before.revoked_certificates.contains(r))
            .map(|r| (r.certificate.as_str(), r.member.as_str()))
            .collect();
        assert_eq!(
            added,
            [(m_old.as_str(), m_member.as_str())],
            "{}",
            s.node.member
        );
        assert_eq!(
            s.revoked_certificates.len(),
            before.revoked_certificates.len() + 1
        );
        unchanged(s, &before, &[&l_member]);
        assert_eq!(s.refusals, before.refusals);
    }
    // The whole consortium still commits, the rotated member's node included.
    cluster.nodes[0].ok(&["stake", "h2", "112", "--dir", &reg]);
    cluster.wait(&all, "a command after the rotation", |s| stake(s) == 112);

    drop(cluster);
    Arc::try_unwrap(net).unwrap().remove();
    eprintln!(
        "FIGURE partition: the whole test took {:?}",
        started.elapsed()
    );
}

/// Unplugs the leading regulator's node until the four others elect one of themselves, then
/// plugs it back in and waits until it follows and every node agrees; returns the leader.
fn move_lead_off_regulator(cluster: &Cluster, net: &Namespaces) -> u64 {
    let others: Vec<usize> = (1..cluster.nodes.len()).collect();
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    // A spurious election could hand the lead back to the regulator; three tries.
    for _ in 0..3 {
        let leader = cluster.leader();
        if leader != 1 {
            return leader;
        }
        let cut = Instant::now();
        net.unplug(1);
        let (new, elected_in, round) = first_leader(cluster, &others, 1, cut);
        eprintln!(
            "FIGURE partition: the leader (node 1) unplugged alone: node {new} leads {elected_in:?} after \
             (polled through the CLI, one round every {round:?})"
        );
        cluster.wait(&others, "the four to follow their leader", |s| {
            s.raft.leader == Some(new)
        });
        let plugged = Instant::now();
        net.plug(1);
        let took = until_each(cluster, &[0], "the regulator to follow", |s| {
            s.raft.leader == Some(new) && s.raft.state == "Follower"
        });
        cluster.agree(&all, "every node to agree after plugging node 1 back in");
        eprintln!(
            "FIGURE partition: node 1 plugged back in follows node {new} after {:?}, every node agrees after {:?}",
            took[0],
            plugged.elapsed()
        );
    }
    panic!("the regulator's node kept or regained the lead three times");
}

/// Polls the nodes `which` until one of them leads, other than `old`; returns it, the time since
/// `since` at which its status said so, and the time one round of polls took.
fn first_leader(
    cluster: &Cluster,
    which: &[usize],
    old: u64,
    since: Instant,
) -> (u64, Duration, Duration) {
    let polling = Instant::now();
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        for i in which {
            if let Some(s) = cluster.nodes[*i].try_status() {
                if s.raft.state == "Leader" && s.node.node_id != old {
                    return (s.node.node_id, since.elapsed(), polling.elapsed() / rounds);
                }
            }
        }
        assert!(
            since.elapsed() < BOUND,
            "no leader among {} {BOUND:?} after the cut",
            members(cluster, which)
        );
    }
}

/// Polls the nodes `which` until `done` holds for each; returns, for each, how long after the
/// call it first did.
fn until_each(
    cluster: &Cluster,
    which: &[usize],
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Vec<Duration> {
    let since = Instant::now();
    let mut seen: Vec<Option<Duration>> = vec![None; which.len()];
    while seen.iter().any(Option::is_none) {
        for (k, i) in which.iter().enumerate() {
            if seen[k].is_none() && cluster.nodes[*i].try_status().is_some_and(|s| done(&s)) {
                seen[k] = Some(since.elapsed());
            }
        }
        if since.elapsed() > BOUND {
            // Reports every node's status and log, and panics.
            cluster.wait(which, what, &done);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen.into_iter().flatten().collect()
}

/// Runs the CLI of node `i` until it succeeds; only an answer that no leader can take the
/// command yet (nothing was proposed) is retried.
fn retry_while_no_leader(cluster: &Cluster, i: usize, args: &[&str]) {
    let since = Instant::now();
    loop {
        let out = cluster.nodes[i].cli(args);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("answered 503") && since.elapsed() < BOUND,
            "{args:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `members`' certificates, standings and sequence numbers in `s` are as in
/// `before`.
fn unchanged(s: &Status, before: &Status, members: &[&str]) {
    for id in members {
        let (now, then) = (s.member(id).unwrap(), before.member(id).unwrap());
        assert_eq!(
            (&now.certificate, &now.status, now.last_sequence),
            (&then.certificate, &then.status, then.last_sequence),
            "{id} on {}",
            s.node.member
        );
    }
}

fn stake(s: &Status) -> u64 {
    s.member("h2").unwrap().stake
}

fn index(cluster: &Cluster, node_id: u64) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.node_id == node_id)
        .unwrap()
}

fn members(cluster: &Cluster, which: &[usize]) -> String {
    which
        .iter()
        .map(|i| cluster.nodes[*i].member.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
