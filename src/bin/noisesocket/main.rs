//! `noisesocket`: make keys and talk NoiseSocket by hand, the way `wg genkey` and
//! `openssl s_client` are used. See `noisesocket --help`.
//!
//! Every failure exits non-zero with one line, `noisesocket: <what failed>`.

mod agent;
mod delegated;
mod options;
mod relay;
mod session;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::key_agent::DelegatedHandshake;
use nginx_noise::core::keys::{self, Secret};
use nginx_noise::core::negotiation::Policy;
use nginx_noise::core::protocol::Role;

use clap::Parser;
use options::{Cli, Command, Options};

fn main() -> ExitCode {
    // clap prints --help and --version and exits 0, and exits 2 with its message on a
    // usage error.
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("noisesocket: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen => {
            let key = Secret::generate().map_err(|e| e.to_string())?;
            println!("{}", keys::encode_key(key.as_bytes()));
            Ok(())
        }
        Command::Pubkey => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| format!("stdin: {e}"))?;
            let key = keys::parse_secret(std::path::Path::new("<stdin>"), &data)
                .map_err(|e| e.to_string())?;
            println!("{}", keys::encode_key(&key.public_key()));
            Ok(())
        }
        Command::Connect { address, session } => connect(&Options::of(&address, session)),
        Command::Listen {
            address,
            session,
            switch_on_failure,
            echo,
            count,
            ready_file,
        } => listen(&Options {
            switch_on_failure,
            echo,
            count,
            ready_file,
            ..Options::of(&address, session)
        }),
        Command::Agent { keys, listen, user } => agent::run(&keys, &listen, user.as_deref()),
    }
}

fn address(o: &Options) -> Result<&str, String> {
    o.address
        .as_deref()
        .ok_or_else(|| "an address is needed".to_string())
}

fn report(o: &Options, info: &nginx_noise::core::handshake::HandshakeInfo) {
    if o.verbose {
        let _ = std::io::stderr().write_all(session::describe(info).as_bytes());
    }
}

fn connect(o: &Options) -> Result<(), String> {
    let (policy, settings, agent_keys) = o.session(Role::Initiator)?;
    let addr = address(o)?;
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let session = match (&o.key_agent, agent_keys) {
        (Some(path), Some(keys)) => {
            let hs = DelegatedHandshake::initiator(policy, settings, Vec::new(), keys)
                .map_err(|e| format!("handshake failed: {e}"))?;
            session::handshake(&mut stream, delegated::Agented::new(hs, path)?)?
        }
        _ => {
            let hs = Handshake::initiator(policy, settings)
                .map_err(|e| format!("handshake failed: {e}"))?;
            session::handshake(&mut stream, hs)?
        }
    };
    report(o, &session.info);
    relay::stdio(stream, session, o.half_close)
}

fn listen(o: &Options) -> Result<(), String> {
    let (policy, settings, agent_keys) = o.session(Role::Responder)?;
    let addr = address(o)?;
    // A bare port binds every IPv4 address, as nginx's `listen PORT` does.
    let addr = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("0.0.0.0:{addr}")
    };
    let listener = TcpListener::bind(&addr).map_err(|e| format!("listen {addr}: {e}"))?;
    if let Some(path) = &o.ready_file {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        std::fs::write(path, format!("{port}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !o.echo {
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        return serve(o, stream, policy, settings, agent_keys, false);
    }
    let limit = o.count.unwrap_or(u64::MAX);
    let mut workers = Vec::new();
    for _ in 0..limit {
        let (stream, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let (policy, settings, keys) = (policy.clone(), settings.clone(), agent_keys.clone());
        let verbose = o.verbose;
        let key_agent = o.key_agent.clone();
        workers.push(thread::spawn(move || {
            let o = Options {
                verbose,
                key_agent,
                ..Options::default()
            };
            if let Err(e) = serve(&o, stream, policy, settings, keys, true) {
                eprintln!("noisesocket: {peer}: {e}");
            }
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve(
    o: &Options,
    mut stream: TcpStream,
    policy: Arc<Policy>,
    settings: Arc<Settings>,
    agent_keys: Option<Arc<[[u8; 32]]>>,
    echo: bool,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let session = match (&o.key_agent, agent_keys) {
        (Some(path), Some(keys)) => {
            let hs = DelegatedHandshake::responder(policy, settings, keys);
            session::handshake(&mut stream, delegated::Agented::new(hs, path)?)?
        }
        _ => session::handshake(&mut stream, Handshake::responder(policy, settings))?,
    };
    report(o, &session.info);
    if echo {
        relay::echo(stream, session)
    } else {
        relay::stdio(stream, session, o.half_close)
    }
}
