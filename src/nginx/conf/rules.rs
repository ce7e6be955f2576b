//! Each configuration rule once, with its message in directive terms. The conditions that
//! the core enforces too (keys a protocol needs, trusted keys a K pattern can use) come
//! from [`crate::core::requirements`]; this module only names the directives.

use nginx_sys::ngx_msec_t;

use super::side_conf::{Loaded, SideConf};
use crate::core::keys::{Secret, MAX_PRIVATE_KEYS};
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::Credentials;
use crate::core::protocol::{Protocol, Role};
use crate::core::requirements::{self, Need};
use crate::core::Error;

/// Default accepted protocols: XX and IK over 25519, both ciphers, all four hashes.
pub fn default_protocols() -> Vec<Protocol> {
    let mut out = Vec::new();
    for pattern in ["XX", "IK"] {
        for cipher in ["ChaChaPoly", "AESGCM"] {
            for hash in ["BLAKE2s", "BLAKE2b", "SHA256", "SHA512"] {
                if let Ok(p) = Protocol::parse(&format!("Noise_{pattern}_25519_{cipher}_{hash}")) {
                    out.push(p);
                }
            }
        }
    }
    out
}

pub const DEFAULT_UPSTREAM_PROTOCOL: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
pub const DEFAULT_HANDSHAKE_TIMEOUT: ngx_msec_t = 60_000;

/// The directives that supply what a side's protocols need.
struct Names {
    private_key: &'static str,
    peer_key: &'static str,
    psk: &'static str,
    /// Why the peer's key is needed, after "is required by P".
    peer_key_why: &'static str,
}

const SERVER: Names = Names {
    private_key: "noise_private_key",
    peer_key: "noise_trusted_keys",
    psk: "noise_psk",
    peer_key_why: "",
};

const UPSTREAM: Names = Names {
    private_key: "noise_upstream_private_key",
    peer_key: "noise_upstream_server_key",
    psk: "noise_upstream_psk",
    peer_key_why: " (nginx must know the server's key before the handshake)",
};

fn keys_present(
    protocol: &Protocol,
    role: Role,
    credentials: &Credentials,
    peer_key_elsewhere: bool,
    names: &Names,
) -> Result<(), String> {
    let (directive, why) =
        match requirements::unmet(protocol, role, credentials, peer_key_elsewhere) {
            None => return Ok(()),
            Some(Need::PrivateKey) => (names.private_key, ""),
            Some(Need::PeerKey) => (names.peer_key, names.peer_key_why),
            Some(Need::Psk) => (names.psk, ""),
        };
    Err(format!(
        "\"{directive}\" is required by \"{protocol}\"{why}"
    ))
}

/// Rule: a `noise_listen` server has the keys each of its protocols needs. For patterns in
/// which the server knows the client's key in advance (KN, KK, KX) it comes from
/// `noise_trusted_keys` ([`requirements::peer_key_candidates`]).
pub fn server_keys(protocols: &[Protocol], side: &SideConf) -> Result<(), String> {
    trusted_keys(protocols, side)?;
    let credentials = side.credentials();
    for p in protocols {
        if p.needs_remote_static(Role::Responder) {
            let trusted = side.trusted_keys.as_ref().map_or(0, |k| k.value.len());
            if let Err(Error::PeerKeys { problem, .. }) =
                requirements::peer_key_candidates(p, trusted)
            {
                use requirements::PeerKeysProblem as P;
                return Err(match problem {
                    P::None => format!(
                        "\"{p}\" needs the client's key before the handshake; set \"noise_trusted_keys\""
                    ),
                    P::NotExactlyOne => format!(
                        "\"{p}\" can take the client's key only from exactly one \"noise_trusted_keys\" entry, not {trusted}"
                    ),
                    P::TooMany => format!(
                        "\"{p}\" tries each trusted key in turn; list at most {}, not {trusted}",
                        requirements::MAX_TRIED_PEER_KEYS
                    ),
                    // Found by trusted_keys() above, with the files named.
                    P::AllRevoked => format!("\"{p}\" {}", problem.describe(trusted)),
                });
            }
            // With several private keys each is tried with each trusted key: bound what a
            // forged first message can cost (two DH per try).
            let keys = side.key_count().max(1);
            if p.needs_remote_static(Role::Initiator)
                && keys * trusted > requirements::MAX_TRIED_PEER_KEYS
            {
                return Err(format!(
                    "\"{p}\" tries each trusted key with each private key; {keys} keys × {trusted} trusted keys is more than {}",
                    requirements::MAX_TRIED_PEER_KEYS
                ));
            }
        }
        keys_present(p, Role::Responder, &credentials, true, &SERVER)?;
    }
    Ok(())
}

/// Rule: `noise_trusted_keys` leaves a client that can complete a handshake: some protocol
/// has the client send (or hold) a static key ([`requirements::trusted_initiator_possible`]),
/// and some trusted key is not also in `noise_revoked_keys`.
fn trusted_keys(protocols: &[Protocol], side: &SideConf) -> Result<(), String> {
    let Some(trusted) = &side.trusted_keys else {
        return Ok(());
    };
    if !protocols
        .iter()
        .any(requirements::trusted_initiator_possible)
    {
        let names: Vec<&str> = protocols.iter().map(Protocol::name).collect();
        return Err(format!(
            "\"noise_trusted_keys\" admits only clients that have a static key, and in none of \"{}\" does the client have one; add a protocol in which it does (XX, IK, KK, ...) to \"noise_protocol\" or remove \"noise_trusted_keys\"",
            names.join(" ")
        ));
    }
    if side.usable_trusted_keys().is_empty() {
        let revoked = side
            .revoked_keys
            .as_ref()
            .map_or_else(String::new, |k| format!(" {}", k.path.display()));
        let n = trusted.value.len();
        let what = if n == 1 {
            "the only key".to_string()
        } else {
            format!("each of the {n} keys")
        };
        return Err(format!(
            "{what} in \"noise_trusted_keys\" {} is also in \"noise_revoked_keys\"{revoked}, so no client can complete a handshake; trust a key that is not revoked",
            trusted.path.display()
        ));
    }
    Ok(())
}

/// Rule: a `noise_upstream on` server has the keys its protocol needs; the back ends' keys
/// for patterns that need them in advance come from `noise_upstream_server_key`.
pub fn upstream_keys(
    protocol: &Protocol,
    side: &SideConf,
    has_server_keys: bool,
) -> Result<(), String> {
    keys_present(
        protocol,
        Role::Initiator,
        &side.credentials(),
        has_server_keys,
        &UPSTREAM,
    )
}

/// Rule: `virgil` negotiation data can name only protocols with a noise-c identifier.
pub fn nameable(protocol: &Protocol, codec: Codec) -> Result<(), String> {
    if codec == Codec::Virgil && protocol.noise_c_ids().is_none() {
        return Err(format!(
            "\"{protocol}\" cannot be named in virgil negotiation data; set \"noise_upstream_negotiation empty\""
        ));
    }
    Ok(())
}

/// Rule: padding is a NoiseSocket body size, 0 (off) to 65517.
pub fn padding(directive: &str, value: isize, arg: &str) -> Result<usize, String> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v <= crate::core::payload::MAX_BODY)
        .ok_or_else(|| format!("\"{directive}\" must be a size from 0 to 65517, not \"{arg}\""))
}

/// Rule: `noise_limit_conn_per_key` is a whole number of connections, at least 1 (one
/// that allowed none would refuse every client with a key: leave the directive out, or
/// use `noise_revoked_keys`, instead).
pub fn limit_per_key(directive: &str, arg: &[u8]) -> Result<u32, String> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            format!(
                "\"{directive}\" must be a number of connections from 1 to {}, not \"{}\"",
                u32::MAX,
                String::from_utf8_lossy(arg)
            )
        })
}

/// Rule: `noise_listen` takes `listen`'s parameters except those of other transports.
pub fn listen_parameters(params: &[Vec<u8>]) -> Result<(), String> {
    if params
        .iter()
        .any(|p| p == b"ssl" || p == b"udp" || p == b"quic")
    {
        return Err(
            "\"noise_listen\" takes the \"listen\" parameters except \"ssl\", \"quic\" and \"udp\""
                .into(),
        );
    }
    Ok(())
}

/// Rule: `noise_private_key` may be repeated up to [`MAX_PRIVATE_KEYS`] times per level,
/// each a different key; `noise_upstream_private_key` is given once.
pub fn private_key_slot(
    directive: &str,
    held: &[Loaded<Secret>],
    new: &Loaded<Secret>,
) -> Result<(), String> {
    if held.is_empty() {
        return Ok(());
    }
    if directive != "noise_private_key" {
        return Err(format!("\"{directive}\" directive is duplicate"));
    }
    if held.len() >= MAX_PRIVATE_KEYS {
        return Err(format!(
            "\"{directive}\": at most {MAX_PRIVATE_KEYS} keys per level ({} is one too many)",
            new.path.display()
        ));
    }
    if let Some(same) = held
        .iter()
        .find(|k| k.value.as_bytes() == new.value.as_bytes())
    {
        return Err(format!(
            "\"{directive}\": {} holds the same key as {}",
            new.path.display(),
            same.path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let d = default_protocols();
        assert_eq!(d.len(), 16);
        assert_eq!(d[0].name(), "Noise_XX_25519_ChaChaPoly_BLAKE2s");
    }
}
