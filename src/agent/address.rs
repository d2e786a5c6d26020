//! The address the agent reports as `status.address`: where peers reach
//! the node. `--address` when given; else the host's first non-loopback
//! IPv4 address, found without a packet sent; else its host name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// An address of TEST-NET-1 (RFC 5737): nothing is ever sent to it, a UDP
/// `connect` only asks the kernel which local address would be used.
const PROBE: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 0, 2, 1), 9);

/// The address to report: `flag` when given, else [`detect`].
pub fn resolve(flag: Option<&str>) -> Option<String> {
    match flag.map(str::trim).filter(|a| !a.is_empty()) {
        Some(address) => Some(address.to_owned()),
        None => detect(),
    }
}

/// The host's first non-loopback IPv4 address (the source address of its
/// default route), else its host name; `None` when neither is known.
pub fn detect() -> Option<String> {
    outbound_ipv4().map(|ip| ip.to_string()).or_else(hostname)
}

/// Where the local API bound at `bound` answers, for `status.apiEndpoint`:
/// its own address when it bound one, the node's `address` when it bound
/// every address (`0.0.0.0`, `::`).
pub fn api_endpoint(bound: SocketAddr, address: Option<&str>) -> String {
    let host = match (bound.ip(), address) {
        (ip, Some(address)) if ip.is_unspecified() => address.to_owned(),
        (IpAddr::V6(ip), _) => format!("[{ip}]"),
        (ip, _) => ip.to_string(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    format!("http://{host}:{}", bound.port())
}

/// Checks a `--address` value: not empty, no spaces or `/`.
pub fn parse(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '/');
    if bad {
        return Err(format!(
            "{text:?} is not an address: give an IP address or a host name"
        ));
    }
    Ok(text.to_owned())
}

/// The local address a UDP socket connected towards [`PROBE`] gets: the
/// kernel picks it from the routing table; no packet leaves the host.
fn outbound_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(PROBE).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if usable(ip) => Some(ip),
        _ => None,
    }
}

fn usable(ip: Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

/// The kernel's host name (Linux), when it has one.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_detection() {
        assert_eq!(resolve(Some("10.1.2.3")).as_deref(), Some("10.1.2.3"));
        assert_eq!(
            resolve(Some(" node-1.example ")).as_deref(),
            Some("node-1.example")
        );
    }

    #[test]
    fn without_the_flag_a_non_loopback_address_or_the_host_name_is_reported() {
        // Whatever this host has: never a loopback or empty address.
        if let Some(found) = resolve(None) {
            assert!(!found.is_empty());
            assert_ne!(found, "127.0.0.1");
            assert_ne!(found, "0.0.0.0");
        }
        assert!(!usable(Ipv4Addr::LOCALHOST));
        assert!(!usable(Ipv4Addr::UNSPECIFIED));
        assert!(usable(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn the_api_endpoint_is_the_bound_address_or_the_node_s() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            api_endpoint(at("127.0.0.1:41234"), Some("10.0.0.7")),
            "http://127.0.0.1:41234"
        );
        assert_eq!(
            api_endpoint(at("0.0.0.0:7070"), Some("10.0.0.7")),
            "http://10.0.0.7:7070"
        );
        assert_eq!(
            api_endpoint(at("[::]:7070"), Some("fd00::1")),
            "http://[fd00::1]:7070"
        );
        assert_eq!(api_endpoint(at("[::1]:7070"), None), "http://[::1]:7070");
        assert_eq!(
            api_endpoint(at("0.0.0.0:7070"), None),
            "http://0.0.0.0:7070"
        );
    }

    #[test]
    fn an_address_flag_must_be_one_word_without_slashes() {
        assert_eq!(parse("127.0.0.1"), Ok("127.0.0.1".to_owned()));
        assert_eq!(parse("fd00::1"), Ok("fd00::1".to_owned()));
        for bad in ["", "  ", "a b", "http://x"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
