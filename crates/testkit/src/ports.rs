//! Loopback ports for servers that a test starts in another process.
//!
//! Asking the kernel for port 0 and handing the number to a child process is racy: the
//! kernel picks from the ephemeral range, and every outgoing connection the tests make
//! (to moto, to the servers) also takes its local port from that range. A client socket
//! that lands on the number between the probe and the child's `bind` makes the child fail
//! with "address in use" — CI saw exactly that. So ports come from below the ephemeral
//! range (Linux's default starts at 32768), where no client socket is ever placed, handed
//! out once per process, and checked free for both TCP and UDP (the DNS server binds both).

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The band ports are taken from: under the default ephemeral range on Linux.
const FIRST: u32 = 20_000;
const LAST: u32 = 32_000;

/// A port on 127.0.0.1 that is free for TCP and UDP now, that no other call in this process
/// returns, and that the kernel never gives to an outgoing connection.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = LAST - FIRST;
    // Different processes (test binaries run one after another, or a developer's two
    // terminals) start at different places in the band.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + offset) % span).expect("port below 65536");
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {LAST} on 127.0.0.1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
        // Each port is bound right after it is handed out (and held): checking all of them
        // only at the end would race with other processes that take ports from the band
        // meanwhile (another test's server) — CI saw that.
        let mut held = Vec::new();
        let ports: Vec<u16> = (0..50)
            .map(|_| {
                let port = free_port();
                held.push(TcpListener::bind(("127.0.0.1", port)).expect("free for TCP"));
                port
            })
            .collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((20_000..32_000).contains(&u32::from(port)), "{port}");
        }
    }
}
