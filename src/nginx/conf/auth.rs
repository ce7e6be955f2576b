//! `noise_auth_request` and its settings: where to ask about a client key the key zone does
//! not have (`noise_keys ... miss=lookup`), and how (docs/nginx-integration.md §6).
//!
//! * The authority is `http://host[:port]/uri` or `unix:/path[:/uri]`. Its address is
//!   resolved once, at configuration time, with nginx's `ngx_parse_url` (as `proxy_pass`
//!   does for a literal name): the first address is used, and a name that cannot be
//!   resolved fails `nginx -t`. A reload resolves it again.
//! * Every setting is inherited from the `stream` level, like the other `noise_*`.

use std::sync::Arc;

use nginx_sys::{ngx_conf_t, ngx_msec_t};

use super::args::{self, text};

/// `noise_auth_request_timeout` when unset.
pub const DEFAULT_TIMEOUT: ngx_msec_t = 5_000;
/// `noise_auth_request_concurrency` when unset: lookups in flight per worker.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// `noise_auth_cache_valid` when unset: seconds an allowing / denying answer is kept.
pub const DEFAULT_CACHE_ALLOW: u64 = 600;
pub const DEFAULT_CACHE_DENY: u64 = 60;

/// The authority's address, parsed at configuration time.
#[derive(Clone)]
pub struct Authority {
    /// As configured, for messages.
    pub url: String,
    /// The resolved address, aligned for any family.
    pub sockaddr: libc::sockaddr_storage,
    pub socklen: libc::socklen_t,
    /// The address as nginx prints it (the connection's `name`).
    pub name: Vec<u8>,
    /// The `Host` header.
    pub host: String,
    /// The request target.
    pub uri: String,
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
    pub timeout: ngx_msec_t,
    pub fail_open: bool,
    pub cache_allow: u64,
    pub cache_deny: u64,
    pub concurrency: usize,
    pub wait_when_full: bool,
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
    pub fn side(&self) -> Option<Arc<AuthSide>> {
        let authority = self.authority.clone()?;
        let (cache_allow, cache_deny) = self
            .cache
            .unwrap_or((DEFAULT_CACHE_ALLOW, DEFAULT_CACHE_DENY));
        Some(Arc::new(AuthSide {
            authority,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            fail_open: self.fail_open.unwrap_or(false),
            cache_allow,
            cache_deny,
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            wait_when_full: self.wait_when_full.unwrap_or(false),
        }))
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
                super::rules::set_once(&mut self.timeout, t, name)?;
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
                super::rules::set_once(&mut self.fail_open, open, name)?;
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
                super::rules::set_once(&mut self.concurrency, n, name)?;
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
                super::rules::set_once(&mut self.cache, (allow, deny), name)?;
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
    let resolved = match args::addresses(cf, address.as_bytes(), false) {
        Some((r, true)) => Some(r),
        Some((_, false)) if !address.starts_with("unix:") => {
            args::addresses(cf, format!("{address}:80").as_bytes(), false).map(|(r, _)| r)
        }
        Some((r, false)) => Some(r),
        None => None,
    };
    let Some((name, raw)) = resolved.and_then(|r| r.into_iter().next()) else {
        return Err(format!(
            "\"{NAME}\": cannot resolve \"{address}\" (the authority's address is resolved when the configuration is read)"
        ));
    };
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if raw.len() > std::mem::size_of::<libc::sockaddr_storage>() {
        return Err(format!("\"{NAME}\": address too long in \"{url_text}\""));
    }
    // SAFETY: raw fits the storage (checked above); both are plain bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            raw.len(),
        )
    };
    Ok(Authority {
        url: url_text,
        sockaddr: storage,
        socklen: raw.len() as libc::socklen_t,
        name: name.into_bytes(),
        host,
        uri,
    })
}
