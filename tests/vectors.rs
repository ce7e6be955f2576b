//! Replays every published NoiseSocket vector byte for byte: each wire message, each
//! received body and the handshake hash, for accept, switch and retry, padded and unpadded.
//! The vectors are `tests/data/noisesocket.json`, an unmodified copy of
//! Metalnem/noisesocket@4d1a0e8 `NoiseSocket.Tests/Vectors/noisesocket.json` (MIT; origin
//! and license in `tests/data/README.md`). How they map onto this implementation:
//! docs/protocol.md §5.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::keys::Secret;
use nginx_noise::core::negotiation::{Credentials, Decision, Negotiator, Response, Stage};
use nginx_noise::core::protocol::{Protocol, Role};
use nginx_noise::core::transport::{Opened, Transport};
use nginx_noise::core::Result;
use serde_json::Value;

/// `tests/data/noisesocket.json` in this crate; `NOISESOCKET_VECTORS` names another copy.
/// Never skipped: a missing file fails the test.
fn vectors_path() -> PathBuf {
    match std::env::var_os("NOISESOCKET_VECTORS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/noisesocket.json"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or("")).expect("hex")
}

fn key(v: &Value) -> Option<[u8; 32]> {
    v.as_str()
        .map(|s| hex::decode(s).unwrap().try_into().unwrap())
}

#[derive(Clone)]
struct StageConfig {
    protocol: Protocol,
    alice: Credentials,
    bob: Credentials,
}

fn stage_config(cfg: &Value, alice_psks: &[Secret], bob_psks: &[Secret]) -> StageConfig {
    let side = |who: &str, psks: &[Secret]| Credentials {
        static_key: key(&cfg[format!("{who}_static")]).map(Secret::from_bytes),
        remote_static: key(&cfg[format!("{who}_remote_static")]),
        psks: psks.to_vec(),
        fixed_ephemeral: key(&cfg[format!("{who}_ephemeral")]).map(Secret::from_bytes),
    };
    StageConfig {
        protocol: Protocol::parse(cfg["protocol_name"].as_str().unwrap()).unwrap(),
        alice: side("alice", alice_psks),
        bob: side("bob", bob_psks),
    }
}

/// The vectors' negotiation: "NoiseSocket", answered by accept, "Switch" or "Retry".
struct VectorNegotiator {
    is_alice: bool,
    initial: StageConfig,
    switch: Option<StageConfig>,
    retry: Option<StageConfig>,
}

impl VectorNegotiator {
    fn stage(&self, stage: Stage) -> &StageConfig {
        match stage {
            Stage::Initial => &self.initial,
            Stage::Switch => self.switch.as_ref().unwrap(),
            Stage::Retry => self.retry.as_ref().unwrap(),
        }
    }
}

impl Negotiator for VectorNegotiator {
    fn initial(&self) -> Result<(Protocol, Vec<u8>)> {
        Ok((self.initial.protocol.clone(), b"NoiseSocket".to_vec()))
    }
    fn response(&self, data: &[u8], _message_empty: bool) -> Result<Response> {
        Ok(match data {
            b"Switch" => Response::Switch(self.switch.as_ref().unwrap().protocol.clone()),
            b"Retry" => Response::Retry {
                protocol: self.retry.as_ref().unwrap().protocol.clone(),
                data: Vec::new(),
            },
            other => panic!("unexpected response {other:?}"),
        })
    }
    fn decide(&self, data: &[u8]) -> Decision {
        assert_eq!(data, b"NoiseSocket");
        if let Some(s) = &self.switch {
            Decision::Switch {
                protocol: s.protocol.clone(),
                data: b"Switch".to_vec(),
            }
        } else if let Some(r) = &self.retry {
            Decision::Retry {
                protocol: r.protocol.clone(),
                data: b"Retry".to_vec(),
            }
        } else {
            Decision::Accept(self.initial.protocol.clone())
        }
    }
    fn check_retry(&self, data: &[u8], _: &Protocol) -> Result<()> {
        assert!(data.is_empty());
        Ok(())
    }
    fn reject_data(&self) -> Vec<u8> {
        b"Reject".to_vec()
    }
    fn credentials(&self, _: &Protocol, _: Role, stage: Stage) -> Credentials {
        let s = self.stage(stage);
        if self.is_alice {
            s.alice.clone()
        } else {
            s.bob.clone()
        }
    }
}

enum Side {
    Hs(Box<Handshake>),
    Tr(Box<Transport>, Vec<u8>),
    Moving,
}

impl Side {
    /// Moves a finished handshake, whose last message has been sent, into transport.
    fn finish(&mut self) {
        if matches!(self, Side::Hs(hs) if hs.is_done() && hs.pending_output().is_empty()) {
            let Side::Hs(hs) = std::mem::replace(self, Side::Moving) else {
                unreachable!()
            };
            let est = hs.finish().unwrap();
            *self = Side::Tr(Box::new(est.transport), est.info.handshake_hash);
        }
    }
}

fn run_vector(index: usize, v: &Value) {
    let psks = |k: &str| -> Vec<Secret> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .map(|p| Secret::from_bytes(key(p).unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (apsk, bpsk) = (psks("alice_psks"), psks("bob_psks"));
    let initial = stage_config(&v["initial"], &apsk, &bpsk);
    let switch = v.get("switch").map(|c| stage_config(c, &apsk, &bpsk));
    let retry = v.get("retry").map(|c| stage_config(c, &apsk, &bpsk));
    let messages = v["messages"].as_array().unwrap();
    let padded = messages.iter().any(|m| m.get("padded_length").is_some());
    let settings = |prologue: &str| {
        Arc::new(Settings {
            app_prologue: bytes(&v[prologue]),
            padding: if padded { 32 } else { 0 },
            trusted: None,
            revoked: None,
            ask_verdict: false,
            confirm: false,
        })
    };
    let neg = |is_alice| {
        Arc::new(VectorNegotiator {
            is_alice,
            initial: initial.clone(),
            switch: switch.clone(),
            retry: retry.clone(),
        })
    };
    let body = |i: usize| {
        messages
            .get(i)
            .map(|m| bytes(&m["message_body"]))
            .unwrap_or_default()
    };
    let ctx = format!("vector {index} {}", initial.protocol);

    let alice_hs =
        Handshake::initiator_with_payload(neg(true), settings("alice_prologue"), body(0))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let bob_hs = Handshake::responder(neg(false), settings("bob_prologue"));
    let mut sides = [Side::Hs(Box::new(alice_hs)), Side::Hs(Box::new(bob_hs))];
    let mut pending: VecDeque<u8> = VecDeque::new();
    for (i, m) in messages.iter().enumerate() {
        let want = bytes(&m["message"]);
        // Every message alternates between Alice and Bob, Alice first, through the
        // handshake (a retry request included) and on into transport.
        let sender = i % 2;
        let receiver = 1 - sender;
        let got = match &mut sides[sender] {
            Side::Hs(hs) => {
                let out = hs.pending_output().to_vec();
                hs.consume_output(out.len());
                out
            }
            Side::Tr(tr, _) => {
                let mut out = vec![0u8; want.len() + 64];
                let (used, n) = tr.seal(&body(i), &mut out).unwrap();
                assert_eq!(used, body(i).len());
                out.truncate(n);
                out
            }
            Side::Moving => unreachable!(),
        };
        assert_eq!(hex::encode(&got), hex::encode(&want), "{ctx}: message {i}");
        pending.extend(got);
        let input: Vec<u8> = pending.drain(..).collect();
        match &mut sides[receiver] {
            Side::Hs(hs) => {
                hs.set_payload(body(i + 1));
                let used = hs
                    .read(&input)
                    .unwrap_or_else(|e| panic!("{ctx}: message {i}: {e}"));
                assert_eq!(used, input.len(), "{ctx}: message {i}");
                if !m["message_body"].is_null() && !bytes(&m["message_body"]).is_empty() {
                    let got_body = hs.received_payloads().last().cloned().unwrap_or_default();
                    // A retry request carries no Noise message and so no body.
                    if !(m.get("negotiation_data").is_some() && got_body.is_empty()) {
                        assert_eq!(got_body, bytes(&m["message_body"]), "{ctx}: body {i}");
                    }
                }
            }
            Side::Tr(tr, _) => {
                let mut buf = input.clone();
                match tr.open(&mut buf).unwrap() {
                    Opened::Frame {
                        consumed,
                        body: range,
                    } => {
                        assert_eq!(consumed, buf.len());
                        assert_eq!(buf[range].to_vec(), body(i), "{ctx}: transport body {i}");
                    }
                    Opened::Incomplete => panic!("{ctx}: incomplete frame {i}"),
                }
            }
            Side::Moving => unreachable!(),
        }
        for side in sides.iter_mut() {
            side.finish();
        }
    }
    let want_hash = bytes(&v["handshake_hash"]);
    for side in &sides {
        match side {
            Side::Tr(_, hash) => assert_eq!(hex::encode(hash), hex::encode(&want_hash), "{ctx}"),
            _ => panic!("{ctx}: handshake did not finish"),
        }
    }
}

#[test]
fn all_1440_vectors_replay_byte_for_byte() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set NOISESOCKET_VECTORS)", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    let vectors = json["vectors"].as_array().unwrap();
    let mut ran = [0usize; 3];
    for (i, v) in vectors.iter().enumerate() {
        run_vector(i, v);
        let kind = if v.get("switch").is_some() {
            1
        } else if v.get("retry").is_some() {
            2
        } else {
            0
        };
        ran[kind] += 1;
    }
    assert_eq!(ran, [480, 480, 480], "accept, switch, retry vectors run");
    assert_eq!(ran.iter().sum::<usize>(), 1440);
}
