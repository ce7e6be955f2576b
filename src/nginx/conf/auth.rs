//! `noise_auth_request` and its settings: where to ask about a client key the key zone does
//! not have (`noise_keys ... miss=lookup`), and how (docs/nginx-integration.md §6).
//!
//! * The authority is `http://host[:port]/uri` or `unix:/path[:/uri]`. An IP address or a
//!   unix socket is known when the directive is read. A host name is placed when the server
//!   is merged ([`Settle`]): with a `resolver` in the server (its own or the `stream`
//!   level's) it is resolved at run time by nginx's resolver, for every lookup, cached as
//!   that resolver caches (`valid=`), so a name the DNS moves is followed without reload
//!   and a name that does not resolve yet does not fail `nginx -t`; without one it is
//!   resolved once, at load, with nginx's `ngx_parse_url` (as `proxy_pass` does for a
//!   literal name): the first address is used, a name that cannot be resolved fails
//!   `nginx -t`, and a reload resolves it again.
//! * Every setting is inherited from the `stream` level, like the other `noise_*`.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use std::ptr::NonNull;

use nginx_sys::{ngx_conf_t, ngx_msec_t, ngx_resolver_t};

use super::args::{self, text};

/// `noise_auth_request_timeout` when unset.
pub const DEFAULT_TIMEOUT: ngx_msec_t = 5_000;
/// `noise_auth_request_concurrency` when unset: lookups in flight per worker.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// `noise_auth_cache_valid` when unset: seconds an allowing / denying answer is kept.
pub const DEFAULT_CACHE_ALLOW: u64 = 600;
pub const DEFAULT_CACHE_DENY: u64 = 60;

/// An address known at configuration time.
pub struct Fixed {
    /// The address, aligned for any family.
    pub sockaddr: libc::sockaddr_storage,
    pub socklen: libc::socklen_t,
    /// The address as nginx prints it (the connection's `name`).
    pub name: Vec<u8>,
}

/// Where the authority is, as the directive says it.
pub enum Address {
    /// An IP address or a unix socket.
    Fixed(Arc<Fixed>),
    /// A host name, placed when the server is merged ([`Settle`]).
    Name { host: String, port: u16 },
}

/// The authority, parsed at configuration time.
pub struct Authority {
    /// As configured, for messages.
    pub url: String,
    pub address: Address,
    /// The `Host` header.
    pub host: String,
    /// The request target.
    pub uri: String,
}

/// Where a server's lookups connect.
pub enum Target {
    /// One address, known since the configuration was read.
    Fixed(Arc<Fixed>),
    /// A name that nginx's resolver resolves for every lookup (the server's `resolver`).
    Resolve {
        resolver: ResolverRef,
        /// The server's `resolver_timeout`.
        timeout: ngx_msec_t,
        host: String,
        port: u16,
        /// "host:port", the connection's `name`.
        name: Vec<u8>,
    },
}

/// A server's resolver, created by nginx in the configuration's pool (so it lives as long
/// as the sides that hold it).
#[derive(Clone, Copy)]
pub struct ResolverRef(pub NonNull<ngx_resolver_t>);

// SAFETY: sides are shared through `Arc` only for their configuration's lifetime, within
// one process; the resolver is used only on nginx's event-loop thread, never sent across
// threads (nginx has none that read configurations).
unsafe impl Send for ResolverRef {}
// SAFETY: as above.
unsafe impl Sync for ResolverRef {}

/// What merge knows to place an authority named by a host name: the configuration (to
/// resolve it at load) and the server's resolver, when one is configured.
pub struct Settle<'a> {
    pub cf: &'a mut ngx_conf_t,
    pub resolver: Option<(NonNull<ngx_resolver_t>, ngx_msec_t)>,
}

impl Settle<'_> {
    /// Where lookups of `authority` connect from this server.
    fn target(&mut self, authority: &Authority) -> Result<Target, String> {
        match &authority.address {
            Address::Fixed(fixed) => Ok(Target::Fixed(fixed.clone())),
            Address::Name { host, port } => match self.resolver {
                Some((resolver, timeout)) => Ok(Target::Resolve {
                    resolver: ResolverRef(resolver),
                    timeout,
                    host: host.clone(),
                    port: *port,
                    name: format!("{host}:{port}").into_bytes(),
                }),
                None => resolve_at_load(self.cf, &format!("{host}:{port}"))
                    .map(|f| Target::Fixed(Arc::new(f)))
                    .map_err(|e| {
                        format!(
                            "\"noise_auth_request\" {e} (without a \"resolver\" the authority's name is resolved when the configuration is read)"
                        )
                    }),
            },
        }
    }
}

/// The `noise_auth_*` directives of one level.
#[derive(Clone, Default)]
pub struct AuthConf {
    pub authority: Option<Arc<Authority>>,
    /// "file:line" of `noise_auth_request`.
    pub at: Option<String>,
    pub timeout: Option<ngx_msec_t>,
    pub fail_open: Option<bool>,
    /// `noise_auth_cache_valid allow= deny=`, in seconds (0: not kept).
    pub cache: Option<(u64, u64)>,
    pub concurrency: Option<usize>,
    /// `noise_auth_request_concurrency N wait`: over the cap, wait for a slot.
    pub wait_when_full: Option<bool>,
}

/// What a server's lookups run with.
pub struct AuthSide {
    pub authority: Arc<Authority>,
    pub target: Target,
    pub timeout: ngx_msec_t,
    pub fail_open: bool,
    pub cache_allow: u64,
    pub cache_deny: u64,
    pub concurrency: usize,
    pub wait_when_full: bool,
    /// This server's lookups in flight, and queued, in this worker (each worker has its
    /// own copy of the configuration, so these count per worker and per server).
    pub in_flight: AtomicUsize,
    pub queued: AtomicUsize,
}

impl AuthConf {
    pub fn merge(&mut self, parent: &AuthConf) {
        if self.authority.is_none() {
            self.authority.clone_from(&parent.authority);
            self.at.clone_from(&parent.at);
        }
        self.timeout = self.timeout.or(parent.timeout);
        self.fail_open = self.fail_open.or(parent.fail_open);
        self.cache = self.cache.or(parent.cache);
        if self.concurrency.is_none() {
            self.concurrency = parent.concurrency;
            self.wait_when_full = parent.wait_when_full;
        }
    }

    /// The run-time settings, when an authority is set.
    pub fn side(&self, settle: &mut Settle) -> Result<Option<Arc<AuthSide>>, String> {
        let Some(authority) = self.authority.clone() else {
            return Ok(None);
        };
        let target = settle
            .target(&authority)
            .map_err(|e| format!("{e} in {}", self.at.clone().unwrap_or_default()))?;
        let (cache_allow, cache_deny) = self
            .cache
            .unwrap_or((DEFAULT_CACHE_ALLOW, DEFAULT_CACHE_DENY));
        Ok(Some(Arc::new(AuthSide {
            authority,
            target,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            fail_open: self.fail_open.unwrap_or(false),
            cache_allow,
            cache_deny,
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            wait_when_full: self.wait_when_full.unwrap_or(false),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        })))
    }

    /// Parses directive `name` (one of the `noise_auth_*`).
    pub fn parse(
        &mut self,
        cf: &mut ngx_conf_t,
        name: &str,
        all: &[Vec<u8>],
    ) -> Result<(), String> {
        let first = all.first().cloned().unwrap_or_default();
        match name {
            "noise_auth_request" => {
                if self.authority.is_some() {
                    return Err(format!("\"{name}\" is duplicate"));
                }
                self.authority = Some(Arc::new(authority(cf, &first)?));
                self.at = Some(args::position(cf));
            }
            "noise_auth_request_timeout" => {
                let t = args::time(name, &first)?;
                if t == 0 {
                    return Err(format!("\"{name}\": the timeout must be more than 0"));
                }
                super::args::set_once(&mut self.timeout, t, name)?;
            }
            "noise_auth_request_fail" => {
                let open = match first.as_slice() {
                    b"closed" => false,
                    b"open" => true,
                    _ => {
                        return Err(format!(
                            "invalid value \"{}\" in \"{name}\", it must be \"closed\" or \"open\"",
                            text(&first)
                        ))
                    }
                };
                super::args::set_once(&mut self.fail_open, open, name)?;
            }
            "noise_auth_request_concurrency" => {
                let n = text(&first)
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=100_000).contains(&n))
                    .ok_or_else(|| {
                        format!(
                            "\"{name}\": invalid number \"{}\" (1 to 100000 lookups per worker)",
                            text(&first)
                        )
                    })?;
                let wait = match all.get(1).map(Vec::as_slice) {
                    None | Some(b"refuse") => false,
                    Some(b"wait") => true,
                    Some(other) => {
                        return Err(format!(
                            "\"{name}\": invalid \"{}\", it must be \"refuse\" or \"wait\"",
                            text(other)
                        ))
                    }
                };
                super::args::set_once(&mut self.concurrency, n, name)?;
                self.wait_when_full = Some(wait);
            }
            "noise_auth_cache_valid" => {
                let (mut allow, mut deny) = (DEFAULT_CACHE_ALLOW, DEFAULT_CACHE_DENY);
                for arg in all {
                    let arg_text = text(arg);
                    let (slot, value) = if let Some(v) = arg_text.strip_prefix("allow=") {
                        (&mut allow, v)
                    } else if let Some(v) = arg_text.strip_prefix("deny=") {
                        (&mut deny, v)
                    } else {
                        return Err(format!(
                            "\"{name}\": invalid parameter \"{arg_text}\", it takes allow=TIME and deny=TIME"
                        ));
                    };
                    *slot = seconds(name, value)?;
                }
                super::args::set_once(&mut self.cache, (allow, deny), name)?;
            }
            _ => return Err(format!("unknown directive \"{name}\"")),
        }
        Ok(())
    }
}

/// A time parameter in whole seconds ("0" keeps nothing).
fn seconds(directive: &str, value: &str) -> Result<u64, String> {
    if value == "0" {
        return Ok(0);
    }
    let ms = args::time(directive, value.as_bytes())?;
    Ok(u64::try_from(ms / 1000).unwrap_or(u64::MAX).max(1))
}

/// `http://host[:port][/uri]` or `unix:/path[:/uri]`.
fn authority(cf: &mut ngx_conf_t, url: &[u8]) -> Result<Authority, String> {
    const NAME: &str = "noise_auth_request";
    let url_text = text(url);
    let (address, host, uri) = if let Some(rest) = url_text.strip_prefix("http://") {
        let (hostport, uri) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hostport.is_empty() {
            return Err(format!("\"{NAME}\": no host in \"{url_text}\""));
        }
        (hostport.to_string(), hostport.to_string(), uri.to_string())
    } else if let Some(rest) = url_text.strip_prefix("unix:") {
        let (path, uri) = match rest.find(':') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, "/"),
        };
        if path.is_empty() || !uri.starts_with('/') {
            return Err(format!(
                "\"{NAME}\": invalid \"{url_text}\", it must be unix:/path or unix:/path:/uri"
            ));
        }
        (
            format!("unix:{path}"),
            "localhost".to_string(),
            uri.to_string(),
        )
    } else {
        return Err(format!(
            "\"{NAME}\": invalid \"{url_text}\", it must start with http:// or unix: (https is not supported)"
        ));
    };
    if uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("\"{NAME}\": invalid URI in \"{url_text}\""));
    }
    let address = if address.starts_with("unix:") {
        Address::Fixed(Arc::new(
            resolve_at_load(cf, &address).map_err(|e| format!("\"{NAME}\" {e}"))?,
        ))
    } else {
        let (name, port) = host_port(&address)
            .ok_or_else(|| format!("\"{NAME}\": invalid host or port in \"{url_text}\""))?;
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            Ok(_) => Address::Fixed(Arc::new(
                resolve_at_load(cf, &format!("{name}:{port}"))
                    .map_err(|e| format!("\"{NAME}\" {e}"))?,
            )),
            Err(_) => Address::Name {
                host: name.to_string(),
                port,
            },
        }
    };
    Ok(Authority {
        url: url_text,
        address,
        host,
        uri,
    })
}

/// "host\[:port\]" split, the port 80 when not given; `None` when either is not valid.
fn host_port(hostport: &str) -> Option<(&str, u16)> {
    let (host, port) = match hostport.rfind(':') {
        // "[::1]" has colons but no port; "[::1]:8080" and "name:8080" have one.
        Some(i) if !hostport.starts_with('[') || hostport[..i].ends_with(']') => {
            (&hostport[..i], hostport[i + 1..].parse::<u16>().ok()?)
        }
        _ => (hostport, 80),
    };
    let valid = !host.is_empty()
        && port != 0
        && (!host.contains(':') || host.starts_with('['))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    valid.then_some((host, port))
}

/// An address resolved now, with nginx's `ngx_parse_url` (the first one).
fn resolve_at_load(cf: &mut ngx_conf_t, address: &str) -> Result<Fixed, String> {
    let Some((name, raw)) =
        args::addresses(cf, address.as_bytes(), false).and_then(|(r, _)| r.into_iter().next())
    else {
        return Err(format!("cannot resolve \"{address}\""));
    };
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if raw.len() > std::mem::size_of::<libc::sockaddr_storage>() {
        return Err(format!("address too long in \"{address}\""));
    }
    // SAFETY: raw fits the storage (checked above); both are plain bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            raw.len(),
        )
    };
    Ok(Fixed {
        sockaddr: storage,
        socklen: raw.len() as libc::socklen_t,
        name: name.into_bytes(),
    })
}
