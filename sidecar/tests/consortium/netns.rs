//! A private network of Linux network namespaces for consortium nodes, made with iproute2.
//!
//! Node `id` runs in a namespace of its own (`fhs{pid}n{id}`) whose only interfaces are its
//! loopback and `eth0`, at `10.77.0.{10 + id}/24`: one end of a veth pair (the node's cable)
//! whose other end, `port{id}`, is plugged into a switch in a namespace of its own
//! (`fhs{pid}sw`). The switch is two Linux bridges without addresses, `sw0` (every port starts
//! there) and `sw1`, joined by a trunk veth (`trunk0` on `sw0`, `trunk1` on `sw1`). So a test
//! can unplug one node's cable (`ip link set port{id} down`) or move some ports to `sw1` (which
//! cuts nothing while the trunk is up) and then split the switch in one step by taking the trunk
//! down, leaving each side able to talk within itself.
//!
//! Everything is created inside these namespaces (`ip -n NS link add … peer … netns NS2`),
//! never in the namespace the test runs in, and everything is removed when [`Namespaces`] is
//! dropped (after the cluster's nodes are killed), test failure or not. A test process killed outright
//! leaves its `fhs{pid}…` namespaces behind; `ip netns del` removes them.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use crate::support::{Place, Placement};

/// Where every node listens for members, in its own namespace.
const NODE_PORT: u16 = 7000;
/// Where the regulator's join desk listens, in node 1's namespace.
const DESK_PORT: u16 = 7100;

/// The namespaces, cables and switch of one test; removed on drop.
#[derive(Debug)]
pub struct Namespaces {
    prefix: String,
    nodes: u64,
    // Every namespace made so far, so that a failure half-way through still removes them.
    created: Vec<String>,
}

impl Namespaces {
    /// Makes the switch and `nodes` node namespaces with their cables plugged into `sw0`.
    ///
    /// Returns `None`, after printing one `skipped: …` line, only when `ip` is not installed or
    /// `ip netns add` is not permitted (not root, or no CAP_NET_ADMIN / CAP_SYS_ADMIN); every
    /// other failure panics.
    pub fn create(nodes: u64) -> Option<Self> {
        const NEEDS: &str = "the partition test needs root and iproute2";
        match Command::new("ip").arg("-V").output() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("skipped: {NEEDS} (`ip` is not installed)");
                return None;
            }
            Err(e) => panic!("ip -V: {e}"),
            Ok(out) => assert!(out.status.success(), "ip -V: {out:?}"),
        }
        let mut this = Self {
            prefix: format!("fhs{}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        let switch = this.switch();
        let out = Command::new("ip")
            .args(["netns", "add", &switch])
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                eprintln!("skipped: {NEEDS} (ip netns add {switch}: {})", err.trim());
                return None;
            }
            panic!("ip netns add {switch}: {err}");
        }
        this.created.push(switch.clone());
        for bridge in ["sw0", "sw1"] {
            ip(&["-n", &switch, "link", "add", bridge, "type", "bridge"]);
            ip(&["-n", &switch, "link", "set", bridge, "up"]);
        }
        ip(&[
            "-n", &switch, "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk1",
        ]);
        ip(&[
            "-n", &switch, "link", "set", "trunk0", "master", "sw0", "up",
        ]);
        ip(&[
            "-n", &switch, "link", "set", "trunk1", "master", "sw1", "up",
        ]);
        for id in 1..=nodes {
            let ns = this.namespace(id);
            ip(&["netns", "add", &ns]);
            this.created.push(ns.clone());
            let port = format!("port{id}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "sw0", "up"]);
            let addr = format!("{}/24", Self::address(id));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(this)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Node `id`'s namespace.
    pub fn namespace(&self, id: u64) -> String {
        format!("{}n{id}", self.prefix)
    }

    /// Node `id`'s address.
    pub fn address(id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, u8::try_from(10 + id).unwrap())
    }

    /// Unplugs node `id`'s cable at the switch: it reaches no one, no one reaches it.
    pub fn unplug(&self, id: u64) {
        self.switch_link(&format!("port{id}"), "down");
    }

    /// Plugs node `id`'s cable back in.
    pub fn plug(&self, id: u64) {
        self.switch_link(&format!("port{id}"), "up");
    }

    /// Moves the ports of `ids` to `sw1`; while the trunk is up this cuts nothing.
    pub fn move_to_sw1(&self, ids: &[u64]) {
        for id in ids {
            self.switch_link(&format!("port{id}"), "master sw1");
        }
    }

    /// Moves the ports of `ids` back to `sw0`: with the trunk down, they leave the nodes on `sw1`
    /// and join those on `sw0`.
    pub fn move_to_sw0(&self, ids: &[u64]) {
        for id in ids {
            self.switch_link(&format!("port{id}"), "master sw0");
        }
    }

    /// Takes the trunk down: the nodes on `sw0` and those on `sw1` no longer reach each other.
    pub fn split(&self) {
        self.switch_link("trunk0", "down");
    }

    /// Brings the trunk back up.
    pub fn mend(&self) {
        self.switch_link("trunk0", "up");
    }

    /// `ip link set LINK SETTING…` in the switch's namespace.
    fn switch_link(&self, link: &str, setting: &str) {
        let switch = self.switch();
        let mut args = vec!["-n", switch.as_str(), "link", "set", link];
        args.extend(setting.split(' '));
        ip(&args);
    }

    /// Removes every namespace (with its cables and bridges) and checks that none is left.
    pub fn remove(mut self) {
        self.delete();
        let list = String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(
            !list.lines().any(|l| l.starts_with(&self.prefix)),
            "namespaces left behind: {list}"
        );
    }

    fn delete(&mut self) {
        for ns in self.created.drain(..).rev() {
            match Command::new("ip").args(["netns", "del", &ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("ip netns del {ns}: {e}"),
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete();
    }
}

impl Placement for Namespaces {
    fn node(&self, id: u64) -> Place {
        assert!((1..=self.nodes).contains(&id), "no namespace for node {id}");
        Place {
            netns: Some(self.namespace(id)),
            listen: SocketAddr::from((Self::address(id), NODE_PORT)),
        }
    }

    fn desk(&self) -> SocketAddr {
        SocketAddr::from((Self::address(1), DESK_PORT))
    }
}

/// `program`, to be run in the network namespace `ns` through `ip netns exec` (which execs it:
/// the child is the program itself).
pub fn exec_in(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// Runs `ip ARGS`; panics with its error if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
