//! Loopback ports for the servers a test starts, shared by the test binaries (included by path).
//!
//! A port found by binding port 0 and letting it go lies in the kernel's ephemeral range, from
//! which every later `bind(0)` and outgoing connection on the machine also draws: between the
//! release and the server's own bind, a node's FHIR listener (which binds port 0), an HTTP
//! client's connection or HAPI could take it, and the server fails with "Address already in
//! use". So ports are handed out from below that range, where only explicit binds go: each block
//! once per process (a cursor), from an offset set by the process id (test binaries and campaign
//! series running side by side start apart), skipping blocks a port of which is taken already.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out.
const LOW: u16 = 10_000;
/// Ports kept for the HAPI FHIR servers of `deploy/test.sh` and the campaign scripts.
const KEPT: std::ops::RangeInclusive<u16> = 18_000..=18_999;

/// Where the range handed out ends (exclusive): the start of the kernel's ephemeral range, or
/// 32768 (Linux's default) when it cannot be read.
fn high() -> u16 {
    static HIGH: OnceLock<u16> = OnceLock::new();
    *HIGH.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .filter(|low: &u16| *low > LOW + 2_000)
            .unwrap_or(32_768)
    })
}

/// The offset, within the range, of the next block this process hands out.
fn cursor() -> &'static AtomicU32 {
    static CURSOR: OnceLock<AtomicU32> = OnceLock::new();
    CURSOR.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7_919)))
}

/// A base port `P` such that `P + o` is free on loopback for every offset `o` in `offsets` (each
/// below `span`), with `P .. P + span` handed out to no one else in this process.
pub fn free_block(span: u16, offsets: &[u16]) -> u16 {
    let width = u32::from(high() - LOW);
    for _ in 0..width / u32::from(span) {
        let at = cursor().fetch_add(u32::from(span), Ordering::Relaxed) % width;
        if at + u32::from(span) > width {
            continue;
        }
        let base = LOW + u16::try_from(at).expect("below the range's end");
        let ports = offsets.iter().map(|o| base + o);
        if ports.clone().any(|p| KEPT.contains(&p)) {
            continue;
        }
        if ports
            .into_iter()
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free loopback ports below {}", high());
}

/// One free loopback port, handed out to no one else in this process.
pub fn free_port() -> u16 {
    free_block(1, &[0])
}
