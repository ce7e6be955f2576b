//! Command-line options of `noisesocket` and how they become a [`Policy`] and [`Settings`].

use std::path::PathBuf;
use std::sync::Arc;

use nginx_noise::core::handshake::Settings;
use nginx_noise::core::keys;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::{Protocol, Role};

pub const DEFAULT_PROTOCOL: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

pub const USAGE: &str = "usage:
  noisesocket keygen                       print a new private key (base64)
  noisesocket pubkey < private.key         print the public key of a private key
  noisesocket connect HOST:PORT [options]  initiator: stdin -> peer, peer -> stdout
  noisesocket listen [HOST:]PORT [options] responder: one connection on stdio, or --echo;
                                           a bare PORT binds every IPv4 address (0.0.0.0),
                                           as nginx's `listen PORT` does
  noisesocket agent --key FILE [--key FILE...] --listen unix:/path [--user NAME]
                                           key agent: answers X25519 with these keys on a
                                           SOCK_SEQPACKET socket, mode 0660 (docs/key-agent.md);
                                           --user drops to NAME after binding
stdio, like OpenBSD nc: stdin EOF leaves the connection open and output goes on until the
peer closes (the peer's close ends it, even with stdin still open); -N sends a FIN at
stdin EOF (nc -N, ncat's default), for peers that answer only once they see the end.
options:
  --protocol NAME        Noise protocol; repeat to allow more (first is offered/default)
                         (default Noise_XX_25519_ChaChaPoly_BLAKE2s)
  --key FILE             own static private key (agent: repeat, for rotation)
  --key-agent unix:/PATH connect, listen: our static key is in a key agent (instead of
                         --key): this process never reads it
  --remote-key FILE|B64  peer's static public key (required by NK XK KK IK, checked otherwise)
  --trusted-keys FILE    only accept peers whose static key is listed
  --negotiation virgil|empty   negotiation data to send (default virgil)
  --prologue STRING      application prologue
  --psk FILE             pre-shared key for psk protocols
  --padding N            pad bodies to a multiple of N bytes
  --switch-on-failure NAME  listen: switch to NAME when the first message fails (stale key)
  --echo                 listen: echo every connection back, serve until --count is reached
  --count N              listen: exit after N connections
  --ready-file PATH      listen: write the bound port to PATH once listening
  -N, --half-close       shut down the sending side (TCP FIN) at stdin EOF
  -v                     print protocol, peer key and handshake hash to stderr";

/// Parsed command line.
#[derive(Debug, Default)]
pub struct Options {
    pub command: String,
    pub address: Option<String>,
    pub protocols: Vec<String>,
    pub key: Option<PathBuf>,
    /// Every `--key`, in order (the agent's keys).
    pub keys: Vec<PathBuf>,
    /// `agent --listen unix:/path`.
    pub listen: Option<String>,
    /// `agent --user NAME`.
    pub user: Option<String>,
    /// `--key-agent unix:/path`: the agent's socket.
    pub key_agent: Option<PathBuf>,
    pub remote_key: Option<String>,
    pub trusted_keys: Option<PathBuf>,
    pub negotiation: Codec,
    pub prologue: Vec<u8>,
    pub psk: Option<PathBuf>,
    pub padding: usize,
    pub switch_on_failure: Option<String>,
    pub echo: bool,
    pub count: Option<u64>,
    pub ready_file: Option<PathBuf>,
    /// `-N`: a FIN at stdin EOF.
    pub half_close: bool,
    pub verbose: bool,
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut o = Options::default();
        let mut args = args.into_iter();
        o.command = args.next().ok_or("missing command")?;
        if matches!(o.command.as_str(), "-h" | "--help" | "help") {
            return Err(USAGE.to_string());
        }
        let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
            args.next().ok_or_else(|| format!("{flag} needs a value"))
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--protocol" => o.protocols.push(value(&mut args, &arg)?),
                "--key" => {
                    let path: PathBuf = value(&mut args, &arg)?.into();
                    o.keys.push(path.clone());
                    o.key = Some(path);
                }
                "--listen" => o.listen = Some(value(&mut args, &arg)?),
                "--user" => o.user = Some(value(&mut args, &arg)?),
                "--key-agent" => {
                    o.key_agent = Some(crate::delegated::socket_path(&value(&mut args, &arg)?)?)
                }
                "--remote-key" => o.remote_key = Some(value(&mut args, &arg)?),
                "--trusted-keys" => o.trusted_keys = Some(value(&mut args, &arg)?.into()),
                "--negotiation" => {
                    o.negotiation = value(&mut args, &arg)?
                        .parse()
                        .map_err(|e| format!("{e}"))?
                }
                "--prologue" => o.prologue = value(&mut args, &arg)?.into_bytes(),
                "--psk" => o.psk = Some(value(&mut args, &arg)?.into()),
                "--padding" => {
                    o.padding = value(&mut args, &arg)?
                        .parse()
                        .ok()
                        .filter(|n| *n <= 65517)
                        .ok_or("--padding needs a number from 0 to 65517")?
                }
                "--switch-on-failure" => o.switch_on_failure = Some(value(&mut args, &arg)?),
                "--echo" => o.echo = true,
                "--count" => {
                    o.count = Some(
                        value(&mut args, &arg)?
                            .parse()
                            .map_err(|_| "--count needs a number")?,
                    )
                }
                "--ready-file" => o.ready_file = Some(value(&mut args, &arg)?.into()),
                "-N" | "--half-close" => o.half_close = true,
                "-v" | "--verbose" => o.verbose = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                s if s.starts_with('-') => return Err(format!("unknown option {s}")),
                s if o.address.is_none() => o.address = Some(s.to_string()),
                s => return Err(format!("unexpected argument {s}")),
            }
        }
        if o.protocols.is_empty() {
            o.protocols.push(DEFAULT_PROTOCOL.to_string());
        }
        Ok(o)
    }

    /// The negotiation policy and settings for `role`, and with `--key-agent` the agent's
    /// public keys (ours); every key file is read here.
    #[allow(clippy::type_complexity)]
    pub fn session(
        &self,
        role: Role,
    ) -> Result<(Arc<Policy>, Arc<Settings>, Option<Arc<[[u8; 32]]>>), String> {
        if self.key_agent.is_some() && self.key.is_some() {
            return Err("--key and --key-agent exclude each other".into());
        }
        let protocols = self
            .protocols
            .iter()
            .map(|p| Protocol::parse(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = Credentials {
            static_key: match &self.key {
                Some(path) => Some(keys::load_secret(path).map_err(|e| e.to_string())?),
                None => None,
            },
            remote_static: match &self.remote_key {
                Some(k) => Some(keys::load_public_key(k).map_err(|e| e.to_string())?),
                None => None,
            },
            psks: match &self.psk {
                Some(path) => vec![keys::load_secret(path).map_err(|e| e.to_string())?],
                None => Vec::new(),
            },
            fixed_ephemeral: None,
        };
        let trusted = match &self.trusted_keys {
            Some(path) => Some(keys::load_key_list(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let switch = match &self.switch_on_failure {
            Some(p) => Some(Protocol::parse(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut policy = Policy::new(protocols, self.negotiation, credentials)
            .map_err(|e| e.to_string())?
            .with_switch_on_failure(switch)
            .with_initiator_static_required(trusted.is_some() && role == Role::Responder);
        let agent_keys = match &self.key_agent {
            Some(path) => Some(crate::delegated::keys(path)?),
            None => None,
        };
        if let Some(keys) = &agent_keys {
            policy = policy.with_agent_keys(keys);
        }
        policy.validate(role).map_err(|e| e.to_string())?;
        let settings = Settings {
            app_prologue: self.prologue.clone(),
            padding: self.padding,
            trusted,
            revoked: None,
            ask_verdict: false,
            // Ask a server to confirm it accepted our key (docs/protocol.md §4.8), so that
            // a refusal fails `connect` instead of looking like a silent server.
            confirm: role == Role::Initiator,
        };
        Ok((Arc::new(policy), Arc::new(settings), agent_keys))
    }
}
