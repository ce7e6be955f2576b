//! `noise_key_agent unix:/path [public_key_file];` and `noise_upstream_key_agent`: the
//! side's static private keys are held by the key agent (`noisesocket agent`,
//! docs/key-agent.md) and nginx never reads them.
//!
//! The public keys are needed at configuration time (the negotiator names our keys by
//! them). They come from the file when one is given (one base64 key a line, in the order
//! of the agent's `--key`), else from the agent itself, asked in the master while the
//! configuration is read: a blocking call bounded by [`CONF_TIMEOUT`], as nginx reads key
//! files at that time; workers never block on the agent.
//!
//! Invariants: a side has either private keys or an agent at one level, never both (the
//! second directive is an `nginx -t` error); the key list is never empty; a socket that
//! cannot be reached is a warning when the keys came from the file, an error otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nginx_sys::ngx_conf_t;

use super::args::{self, text};
use super::main::MainConf;
use crate::agent_socket::{list_keys, AgentSocket};
use crate::core::keys::{self, MAX_PRIVATE_KEYS};
use crate::nginx::util::log;

/// How long the master waits for the agent's key list while reading the configuration.
pub const CONF_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a worker waits for one answer of the agent before the handshake fails.
pub const ANSWER_TIMEOUT_MS: u64 = 1000;

/// A side's key agent, as its handshakes use it.
#[derive(Debug)]
pub struct AgentConf {
    /// `unix:/path`, as written (for log lines).
    pub name: String,
    pub path: PathBuf,
    /// The agent's public keys we use, in order: the first is presented, the others are
    /// accepted from clients that know them (rotation; the server side only).
    pub keys: Arc<[[u8; 32]]>,
    /// "file:line" of the directive.
    pub at: String,
}

/// Parses `directive unix:/path [public_key_file]`.
pub fn parse(
    cf: &mut ngx_conf_t,
    main: &mut MainConf,
    directive: &str,
    all: &[Vec<u8>],
) -> Result<Arc<AgentConf>, String> {
    let name = text(all.first().map(Vec::as_slice).unwrap_or_default());
    let Some(spec) = name.strip_prefix("unix:").filter(|p| !p.is_empty()) else {
        return Err(format!(
            "\"{directive}\": invalid address \"{name}\": expected unix:/path (the agent's socket)"
        ));
    };
    let path = args::full_path(cf, spec.as_bytes())?;
    let keys = match all.get(1) {
        Some(file) => {
            let file = args::full_path(cf, file)?;
            let keys = public_key_file(&file).map_err(|e| format!("\"{directive}\": {e}"))?;
            check_reachable(cf, directive, &name, &path, &keys);
            keys
        }
        None => learned(main, &path).map_err(|e| {
            format!(
                "\"{directive}\": cannot learn the public keys from the key agent at {name}: {e}; start the agent first, or give its public key file as the second parameter"
            )
        })?,
    };
    if keys.len() > MAX_PRIVATE_KEYS {
        return Err(format!(
            "\"{directive}\": the agent at {name} has {} keys; at most {MAX_PRIVATE_KEYS} are used per server",
            keys.len()
        ));
    }
    Ok(Arc::new(AgentConf {
        name,
        path,
        keys: keys.into(),
        at: args::position(cf),
    }))
}

/// The keys of a public-key file, in order (one base64 key a line; `#` comments).
fn public_key_file(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(data).map_err(|_| format!("{}: not text", path.display()))?;
    let mut out: Vec<[u8; 32]> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.split('#').next().unwrap_or_default().trim();
        if body.is_empty() {
            continue;
        }
        let key =
            keys::decode_key(body).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if out.contains(&key) {
            return Err(format!("{}:{}: the same key twice", path.display(), i + 1));
        }
        out.push(key);
    }
    if out.is_empty() {
        return Err(format!("{}: no key in the file", path.display()));
    }
    Ok(out)
}

/// The agent's keys, asked once per socket and configuration.
fn learned(main: &mut MainConf, path: &Path) -> Result<Vec<[u8; 32]>, String> {
    if let Some((_, keys)) = main.agent_keys.iter().find(|(p, _)| p == path) {
        return Ok(keys.clone());
    }
    let keys = list_keys(path, CONF_TIMEOUT).map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Err("it holds no key".into());
    }
    main.agent_keys.push((path.to_path_buf(), keys.clone()));
    Ok(keys)
}

/// With the keys from a file: warns when the agent cannot be reached now (handshakes
/// fail until it runs), or does not hold one of the keys.
fn check_reachable(
    cf: &mut ngx_conf_t,
    directive: &str,
    name: &str,
    path: &Path,
    keys: &[[u8; 32]],
) {
    if let Err(e) = AgentSocket::connect(path) {
        log::conf(
            cf,
            log::WARN,
            &format!(
                "\"{directive}\": the key agent at {name} cannot be reached now ({e}); handshakes will fail until it runs"
            ),
        );
        return;
    }
    if let Ok(held) = list_keys(path, CONF_TIMEOUT) {
        if let Some(missing) = keys.iter().find(|k| !held.contains(k)) {
            log::conf(
                cf,
                log::WARN,
                &format!(
                    "\"{directive}\": the key agent at {name} does not hold the key {}; handshakes that need it will fail",
                    keys::fingerprint(missing)
                ),
            );
        }
    }
}
