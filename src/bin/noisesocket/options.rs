//! Command-line options of `noisesocket` (clap, derived) and how they become a [`Policy`]
//! and [`Settings`]. Usage errors exit 2 with clap's message; `--help` exits 0.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use nginx_noise::core::handshake::Settings;
use nginx_noise::core::keys;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::{Protocol, Role};

pub const DEFAULT_PROTOCOL: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Make keys and talk NoiseSocket by hand, the way `wg genkey` and `openssl s_client` are
/// used.
///
/// stdio works like OpenBSD nc: stdin EOF leaves the connection open and output goes on
/// until the peer closes (the peer's close ends it, even with stdin still open); -N sends a
/// FIN at stdin EOF (nc -N, ncat's default), for peers that answer only once they see the
/// end.
#[derive(Debug, Parser)]
#[command(name = "noisesocket", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new private key (base64).
    Keygen,
    /// Print the public key of the private key on stdin.
    Pubkey,
    /// Initiator: stdin -> peer, peer -> stdout.
    Connect {
        /// HOST:PORT of the NoiseSocket server.
        address: String,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Responder: one connection on stdio, or --echo.
    Listen {
        /// [HOST:]PORT; a bare PORT binds every IPv4 address (0.0.0.0), as nginx's
        /// `listen PORT` does.
        address: String,
        #[command(flatten)]
        session: SessionArgs,
        /// Switch to this protocol when the first message fails (a stale key).
        #[arg(long, value_name = "NAME")]
        switch_on_failure: Option<String>,
        /// Echo every connection back, serving until --count is reached.
        #[arg(long)]
        echo: bool,
        /// Exit after N connections.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Write the bound port to PATH once listening.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Key agent: answers X25519 with these keys on a SOCK_SEQPACKET socket, mode 0660
    /// (docs/key-agent.md).
    Agent {
        /// A static private key; repeat for rotation (the first is the one presented).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Where to listen: unix:/path.
        #[arg(long, value_name = "unix:/PATH")]
        listen: String,
        /// Drop to this user (and its group) after binding.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
}

/// What both `connect` and `listen` take.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Noise protocol; repeat to allow more (the first is offered, or the default).
    #[arg(long = "protocol", value_name = "NAME", default_value = DEFAULT_PROTOCOL)]
    pub protocols: Vec<String>,
    /// Own static private key.
    #[arg(long, value_name = "FILE", conflicts_with = "key_agent")]
    pub key: Option<PathBuf>,
    /// Our static key is in a key agent (instead of --key): this process never reads it.
    #[arg(long, value_name = "unix:/PATH", value_parser = crate::delegated::socket_path)]
    pub key_agent: Option<PathBuf>,
    /// The peer's static public key (required by NK XK KK IK, checked otherwise).
    #[arg(long, value_name = "FILE|B64")]
    pub remote_key: Option<String>,
    /// Only accept peers whose static key is listed.
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
    /// Negotiation data to send: virgil or empty.
    #[arg(long, value_name = "CODEC", default_value = "virgil", value_parser = parse_codec)]
    pub negotiation: Codec,
    /// Application prologue.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub prologue: String,
    /// Pre-shared key for psk protocols.
    #[arg(long, value_name = "FILE")]
    pub psk: Option<PathBuf>,
    /// Pad bodies to a multiple of N bytes (0 to 65517).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=65517))]
    pub padding: u16,
    /// Shut down the sending side (TCP FIN) at stdin EOF.
    #[arg(short = 'N', long)]
    pub half_close: bool,
    /// Print protocol, peer key and handshake hash to stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// One session's options, as `connect`, `listen` and the echo threads use them.
#[derive(Debug, Default)]
pub struct Options {
    pub address: Option<String>,
    pub protocols: Vec<String>,
    pub key: Option<PathBuf>,
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
    /// The options of `connect` or `listen`.
    pub fn of(address: &str, s: SessionArgs) -> Options {
        let protocols = if s.protocols.is_empty() {
            vec![DEFAULT_PROTOCOL.to_string()]
        } else {
            s.protocols
        };
        Options {
            address: Some(address.to_string()),
            protocols,
            key: s.key,
            key_agent: s.key_agent,
            remote_key: s.remote_key,
            trusted_keys: s.trusted_keys,
            negotiation: s.negotiation,
            prologue: s.prologue.into_bytes(),
            psk: s.psk,
            padding: usize::from(s.padding),
            half_close: s.half_close,
            verbose: s.verbose,
            ..Options::default()
        }
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
