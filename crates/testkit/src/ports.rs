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

/// How many ports of the band this process has probed.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `offset`-th port this process probes. Different processes (test binaries run one
/// after another, or a developer's two terminals) start at different places in the band.
fn nth_port(offset: u32) -> u16 {
    let span = LAST - FIRST;
    let start = std::process::id().wrapping_mul(7919) % span;
    u16::try_from(FIRST + (start + offset) % span).expect("port below 65536")
}

/// A port on 127.0.0.1 that is free for TCP and UDP now, that no other call in this process
/// returns, and that the kernel never gives to an outgoing connection.
pub fn free_port() -> u16 {
    let span = LAST - FIRST;
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = nth_port(offset);
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
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        // Whether a port is still free after `free_port` probed it is not asserted: other
        // processes (another test binary's servers) take ports from the band at any time,
        // and two fresh-clone CI runs saw one taken within microseconds.
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((20_000..32_000).contains(&u32::from(port)), "{port}");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        // Hold the port the next call would probe first (if it is free now; another test
        // of this process may take it first, and then the call skips it anyway).
        let next = nth_port(NEXT.load(Ordering::Relaxed));
        if let Ok(_held) = TcpListener::bind(("127.0.0.1", next)) {
            assert_ne!(free_port(), next, "a port in use was handed out");
        }
    }
}
