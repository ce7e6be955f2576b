//! `noise_upstream_server_key` pins and which upstream server each applies to
//! (docs/nginx-integration.md §5.4).
//!
//! A pin is keyed either by an address (`10.0.0.5:7443`, `[::1]:7443`) or by
//! a name (`backend.example:7443`). Invariants:
//!
//! * an address pin applies to the server at that address, whatever its configured name;
//! * a name pin applies to a server configured with that name (the `server` directive's
//!   text, or `proxy_pass name:port` for an implicit group), at every address the name has,
//!   at configuration time or, for `server ... resolve`, at run time; and, as the address
//!   form always did, to a server configured *by address* at one of the addresses the name
//!   had when the configuration loaded. It never applies to a server configured with
//!   another name, even at the same address (two names, one address);
//! * when both an address pin and a name pin apply and disagree, the address pin wins: it
//!   names the socket being connected to.
//!
//! Pure data and comparisons: nothing here touches nginx.

use crate::nginx::util::sockaddr::same_address;

/// A `host:port` as written in a `server` directive or a pin: the host compared without
/// case, the port exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Lower case.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`; `None` unless the host is a plausible DNS name or address and
    /// the port a number in 1..=65535.
    pub fn parse(text: &str) -> Option<HostPort> {
        let (host, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
        let plausible = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
        if host.is_empty() || !(bracketed || host.chars().all(plausible)) {
            return None;
        }
        Some(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the host is an IP address (IPv4 dotted, or a bracketed IPv6 address) rather
    /// than a name.
    pub fn is_address(&self) -> bool {
        self.host.starts_with('[') || self.host.parse::<std::net::Ipv4Addr>().is_ok()
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What a pin is keyed by.
#[derive(Clone, Debug)]
pub enum Pinned {
    /// Socket addresses as raw `sockaddr` bytes.
    Address(Vec<Vec<u8>>),
    /// A name; `resolved` holds the addresses it had when the configuration loaded (empty
    /// when only a `server ... resolve` of that name knows it).
    Name {
        name: HostPort,
        resolved: Vec<Vec<u8>>,
    },
}

/// One `noise_upstream_server_key`: the key the server it applies to must prove.
#[derive(Clone, Debug)]
pub struct ServerKey {
    /// The address or name as written.
    pub address: String,
    pub pinned: Pinned,
    pub key: [u8; 32],
}

/// A server as the pins see it: where it is being connected, and how it was configured.
pub struct Server<'a> {
    /// Raw `sockaddr` bytes.
    pub sockaddr: &'a [u8],
    /// The configured name (`server` text or implicit `host:port`), if known.
    pub name: Option<&'a str>,
}

/// The key of the pin that applies to `server`, if any (the address pin first).
pub fn key_for(pins: &[ServerKey], server: &Server<'_>) -> Option<[u8; 32]> {
    key_by(pins, server, same_address)
}

/// [`key_for`] with `same` telling whether two socket addresses are one.
fn key_by(
    pins: &[ServerKey],
    server: &Server<'_>,
    same: impl Fn(&[u8], &[u8]) -> bool,
) -> Option<[u8; 32]> {
    let configured = server.name.and_then(HostPort::parse);
    let by_address = pins.iter().find(|p| match &p.pinned {
        Pinned::Address(addrs) => addrs.iter().any(|a| same(a, server.sockaddr)),
        Pinned::Name { .. } => false,
    });
    let by_name = || {
        pins.iter().find(|p| match (&p.pinned, &configured) {
            (Pinned::Name { name, .. }, Some(c)) if name == c => true,
            // A server configured by address, at an address the name had at load time.
            (Pinned::Name { resolved, .. }, Some(c)) if c.is_address() => {
                resolved.iter().any(|a| same(a, server.sockaddr))
            }
            _ => false,
        })
    };
    by_address.or_else(by_name).map(|p| p.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nginx's comparison is not linked into unit tests; these addresses compare as bytes.
    fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
        a == b
    }

    /// A `sockaddr_in` as raw bytes.
    fn v4(a: [u8; 4], port: u16) -> Vec<u8> {
        let mut raw = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        raw.extend(port.to_be_bytes());
        raw.extend(a);
        raw.extend([0u8; 8]);
        raw
    }

    fn name_pin(name: &str, resolved: Vec<Vec<u8>>, key: u8) -> ServerKey {
        ServerKey {
            address: name.into(),
            pinned: Pinned::Name {
                name: HostPort::parse(name).unwrap(),
                resolved,
            },
            key: [key; 32],
        }
    }

    #[test]
    fn which_pin_applies() {
        let here = v4([10, 0, 0, 5], 7443);
        let moved = v4([10, 0, 0, 6], 7443);
        let pins = vec![
            name_pin("backend.example:7443", vec![here.clone()], 1),
            ServerKey {
                address: "10.0.0.9:7443".into(),
                pinned: Pinned::Address(vec![v4([10, 0, 0, 9], 7443)]),
                key: [2; 32],
            },
        ];
        let at = |sockaddr: &[u8], name: Option<&str>| {
            key_by(&pins, &Server { sockaddr, name }, bytes_equal).map(|k| k[0])
        };
        // By name, at any address, without case.
        assert_eq!(at(&here, Some("backend.example:7443")), Some(1));
        assert_eq!(at(&moved, Some("Backend.Example:7443")), Some(1));
        assert_eq!(at(&moved, Some("backend.example:7444")), None);
        // Another name at the same address: not this pin.
        assert_eq!(at(&here, Some("other.example:7443")), None);
        // A server written as the address the name had at load time (as before).
        assert_eq!(at(&here, Some("10.0.0.5:7443")), Some(1));
        assert_eq!(at(&moved, Some("10.0.0.6:7443")), None);
        // An unknown name: only address pins.
        assert_eq!(at(&here, None), None);
        assert_eq!(at(&v4([10, 0, 0, 9], 7443), None), Some(2));
    }

    #[test]
    fn address_pin_wins() {
        let here = v4([10, 0, 0, 5], 7443);
        let pins = vec![
            name_pin("backend.example:7443", vec![], 1),
            ServerKey {
                address: "10.0.0.5:7443".into(),
                pinned: Pinned::Address(vec![here.clone()]),
                key: [2; 32],
            },
        ];
        let server = Server {
            sockaddr: &here,
            name: Some("backend.example:7443"),
        };
        assert_eq!(key_by(&pins, &server, bytes_equal), Some([2; 32]));
    }

    #[test]
    fn parses_host_port() {
        let hp = HostPort::parse("Backend.Example:7443").unwrap();
        assert_eq!(hp.host, "backend.example");
        assert_eq!(hp.port, 7443);
        assert!(!hp.is_address());
        assert!(HostPort::parse("127.0.0.1:80").unwrap().is_address());
        assert!(HostPort::parse("[::1]:80").unwrap().is_address());
        for bad in [
            "backend.example",
            "backend.example:",
            "backend.example:0",
            "backend.example:65536",
            ":80",
            "bad name:80",
            "a/b:80",
            "[]:80",
        ] {
            assert!(HostPort::parse(bad).is_none(), "{bad}");
        }
    }
}
