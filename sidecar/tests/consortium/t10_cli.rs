//! The CLI with one regulator node: what it refuses, and that only admitted members connect.

use std::collections::BTreeSet;
use std::time::Duration;

use fhirseal_sidecar::consortium::files::{Layout, MemberSecrets};
use fhirseal_sidecar::consortium::transport::Channel;
use fhirseal_sidecar::consortium::trust::{Identity, Peer, Trust};

use crate::support::{call_as, cli, fails, free_port, ok, runtime, serial, Cluster};

#[test]
fn the_cli_refuses_what_it_cannot_do_and_changes_nothing() {
    let _serial = serial();
    let mut cluster = Cluster::found(1, 1);
    let reg = cluster.nodes[0].dir().to_owned();
    let listen = free_port().to_string();
    let desk = cluster.desk.to_string();

    // Malformed requests to the API: a clear 4xx, and the state does not move.
    let before = cluster.nodes[0].status();
    for (method, path, body, status) in [
        (
            http::Method::POST,
            "/consortium/submit",
            b"not a command".to_vec(),
            400,
        ),
        (http::Method::POST, "/consortium/submit", Vec::new(), 400),
        (http::Method::GET, "/consortium/submit", Vec::new(), 405),
        (http::Method::GET, "/nothing-here", Vec::new(), 404),
        (http::Method::POST, "/raft/vote", b"{".to_vec(), 400),
    ] {
        let (answer, body) = call_as(
            &cluster.nodes[0].secrets(),
            &before,
            method.clone(),
            path,
            body,
        );
        assert_eq!(answer, status, "{method} {path}: {body}");
    }
    let after = cluster.nodes[0].status();
    assert_eq!(after.raft.last_log_index, before.raft.last_log_index);
    assert_eq!(after.refusals_total, 0);
    // Founded without election parameters: no election, M = 2.
    assert_eq!(
        (after.election.epoch_blocks, after.election.max_consecutive),
        (0, 2)
    );

    // Election parameters a genesis cannot carry: refused before anything is written.
    let root = tempfile::tempdir().unwrap();
    let short = root.path().join("short-epochs");
    for bad in [["--epoch-blocks", "2"], ["--max-terms", "0"]] {
        let err = fails(&[
            "init",
            "--dir",
            short.to_str().unwrap(),
            "--consortium",
            "short",
            "--listen",
            &listen,
            bad[0],
            bad[1],
        ]);
        assert!(err.contains("--epoch-blocks must be 0"), "{err}");
        assert!(!short.exists(), "{bad:?} wrote {}", short.display());
    }

    // A second genesis in the same directory.
    let err = fails(&[
        "init",
        "--dir",
        &reg,
        "--consortium",
        "again",
        "--listen",
        &listen,
        "--join-listen",
        &desk,
    ]);
    assert!(err.contains("already holds a node"), "{err}");

    // A join desk whose certificate is not the pinned one: nothing is written.
    let root = tempfile::tempdir().unwrap();
    let wrong = root.path().join("wrong-pin");
    let err = fails(&[
        "join",
        &format!("https://{desk}"),
        "--pin",
        &"ab".repeat(32),
        "--dir",
        wrong.to_str().unwrap(),
        "--member",
        "h9",
        "--listen",
        &listen,
        "--rsa-bits",
        "2048",
    ]);
    assert!(err.contains("cannot reach") || err.contains("TLS"), "{err}");
    assert!(!wrong.join("consortium/membership.toml").exists());
    assert!(!wrong.join("keys").exists());

    for (url, pin, why) in [
        (
            format!("http://{desk}"),
            cluster.pin.clone(),
            "expected https://host:port",
        ),
        (format!("https://{desk}"), "xyz".to_owned(), "64 hex digits"),
    ] {
        let dir = root.path().join("bad");
        let err = fails(&[
            "join",
            &url,
            "--pin",
            &pin,
            "--dir",
            dir.to_str().unwrap(),
            "--member",
            "h9",
            "--listen",
            &listen,
        ]);
        assert!(err.contains(why), "{err}");
    }
    let dir = root.path().join("bad-kind");
    let err = fails(&[
        "join",
        &format!("https://{desk}"),
        "--pin",
        &cluster.pin,
        "--dir",
        dir.to_str().unwrap(),
        "--member",
        "h9",
        "--kind",
        "regulator",
        "--listen",
        &listen,
    ]);
    assert!(err.contains("one regulator"), "{err}");

    // Nothing pending under that name.
    let any = "ab".repeat(32);
    let err = fails(&["admit", "nobody", "--dir", &reg, "--fingerprint", &any]);
    assert!(
        err.contains("404") && err.contains("no pending join request"),
        "{err}"
    );

    // An applicant whose request is pending is not a member: its node cannot connect. A second
    // request under its name, invited too, is refused while the first is pending.
    let i = cluster.join(2);
    let token = cluster.invite("h2");
    let err = fails(&[
        "join",
        &format!("https://{desk}"),
        "--pin",
        &cluster.pin,
        "--invite",
        &token,
        "--dir",
        root.path().join("twin").to_str().unwrap(),
        "--member",
        "h2",
        "--node-id",
        "7",
        "--listen",
        &listen,
        "--rsa-bits",
        "2048",
    ]);
    assert!(
        err.contains("409") && err.contains("another join request"),
        "{err}"
    );
    let applicant = &cluster.nodes[i];
    let pending = ok(&["joins", "--dir", &reg]);
    assert!(
        pending.contains("h2 (h2, hospital) node 2 at "),
        "{pending}"
    );
    assert!(
        pending.contains(&format!(", certificate {}\n", cluster.nodes[i].certificate)),
        "{pending}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let keys = Layout::new(&applicant.dir).keys();
        for name in [
            "signing.key",
            "vote.key",
            "beacon.key",
            "tls.key.pem",
            "institution-rsa.pem",
        ] {
            let mode = std::fs::metadata(keys.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
    let regulator = cluster.nodes[0].status();
    let refused = connect_as(
        &applicant.secrets(),
        &regulator.node.address,
        &regulator.node.certificate,
        1,
    );
    assert!(refused.is_err(), "a non-member connected: {refused:?}");
    assert!(
        cluster.nodes[0].node_log().contains("connection refused"),
        "the regulator's node logged no refusal"
    );
    // Not admitted, without the link key: its node takes no write (it would fingerprint it
    // under no consortium's key), and says why.
    let joining = cluster.wait(&[i], "the applicant's node", |s| {
        s.node.standing == "joining"
    });
    assert_eq!(joining[0].node.link_key_version, None);
    let (status, outcome) = write_patient(&applicant.fhir_base());
    assert_eq!(status, 503, "{outcome}");
    assert!(outcome.contains("OperationOutcome"), "{outcome}");
    assert!(outcome.contains("joining the consortium"), "{outcome}");

    // Admitted, it is in; a second admission of the same request is refused by the state.
    cluster.admit(i, true);
    cluster.wait(&[0, i], "h2's admission", |s| s.raft.voters.len() == 2);
    // Admitted, with the link key: it takes part.
    cluster.wait(&[i], "h2 to take part", |s| {
        s.node.standing == "active" && s.node.link_key_version == Some(1)
    });
    let request = Layout::new(&cluster.nodes[i].dir).join_request();
    let err = fails(&[
        "admit",
        "h2",
        "--dir",
        &reg,
        "--request",
        request.to_str().unwrap(),
        "--fingerprint",
        &cluster.nodes[i].certificate,
    ]);
    assert!(err.contains("MemberExists"), "{err}");
    let member = connect_as(
        &cluster.nodes[i].secrets(),
        &regulator.node.address,
        &regulator.node.certificate,
        1,
    );
    assert!(member.is_ok(), "an admitted member was refused: {member:?}");

    // A node that is not running: a clear error.
    cluster.nodes[i].stop();
    let out = cli(&["status", "--dir", cluster.nodes[i].dir()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

/// POSTs a Patient to the FHIR base `base` (no credentials: a node that takes no writes says
/// so before it asks who is writing); the status and the body.
fn write_patient(base: &str) -> (u16, String) {
    runtime().block_on(async {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let request = http::Request::post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"resourceType":"Patient","name":[{"family":"Nobody"}]}"#,
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// Opens a mutual-TLS connection to the node at `addr` (whose certificate is `cert`, node
/// `node_id`) presenting `secrets`' certificate, and asks its status.
pub fn connect_as(
    secrets: &MemberSecrets,
    addr: &str,
    cert: &str,
    node_id: u64,
) -> Result<(), String> {
    let fp = fhirseal_sidecar::consortium::files::parse_fingerprint(cert).unwrap();
    let trust = Trust::pinned(
        Peer {
            member: "peer".into(),
            node_id,
        },
        BTreeSet::from([fp]),
    );
    let identity = Identity::new(secrets.certified_key().unwrap());
    runtime().block_on(async {
        let mut channel = Channel::new(addr, &trust, &identity, Some(node_id)).unwrap();
        channel
            .request(
                http::Method::GET,
                "/consortium/status",
                Vec::new(),
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}
