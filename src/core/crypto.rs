//! The primitives snow runs the handshake with, and the AEAD the transport uses.
//!
//! X25519 and every AEAD (the transport's and the handshake's own) come from aws-lc-rs: on
//! the machines we measured, its X25519 is about twice as fast as snow's default
//! (curve25519-dalek) and its AES-256-GCM (VAES/AVX-512 where the CPU has it) about twice
//! as fast as ring's (`cargo bench --bench handshake`, `--bench transport`). X25519 is most
//! of a handshake's cost; the handshake's AEAD calls are few and short, so what counts there
//! is per-call overhead, which snow's RustCrypto ciphers pay more of (docs/performance.md).
//! Ephemeral keys take their randomness from aws-lc's DRBG too. Hashes stay snow's
//! defaults (aws-lc has no BLAKE2).
//!
//! A responder that tries several keys on one first message (KK with several trusted keys
//! and private keys) would repeat the same work on every try. [`PeerKeyDh`] holds, from
//! configuration time, the DH of each of our static keys with each configured peer key (the
//! `ss` of KK: nothing a peer sends goes into it); a [`TriesMemo`] holds the DH and HKDF
//! results of one first message's tries (its `es`, the same ephemeral key on every try with
//! one private key, and the key derivation from it) and is wiped when the tries end.
//! [`TriesResolver`] hands them to the static key's [`Dh`] and to the [`Hash`].
//!
//! Invariants: a DH whose output is all zeros (the peer sent a low-order point) fails instead
//! of yielding a predictable secret; the handshake reports it as the peer's fault. Nothing
//! keyed on a peer's bytes outlives the tries of one handshake message ([`TriesMemo::close`]).
//! A stored result is the DH of exactly the same private key (by identity or by bytes) and
//! exactly the same peer bytes, so a hit gives what the computation would.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use super::key_ops::is_low_order;
use super::key_ops::{Ephemeral, KeyOps};
use super::keys::Secret;

pub use aws_lc_rs::aead;

/// snow's [`CryptoResolver`] with our X25519; everything else from snow's default.
#[derive(Default)]
pub struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        TriesResolver::default().resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        TriesResolver::default().resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        TriesResolver::default().resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        TriesResolver::default().resolve_cipher(choice)
    }
}

/// [`Resolver`] whose static key's DH looks in `peer_dh` (configuration time) and `memo`
/// (this handshake message's tries) before it computes. With `key_ops` (a delegated
/// handshake, [`crate::core::key_agent`]), a static key named by an agent public key has
/// no private key here: its DH comes from the agent's answers; and ephemeral keys and their
/// DH are kept there, so the handshake replays identically.
#[derive(Clone, Default)]
pub struct TriesResolver {
    pub peer_dh: Option<Arc<PeerKeyDh>>,
    pub memo: Option<Arc<TriesMemo>>,
    pub key_ops: Option<Arc<KeyOps>>,
}

impl CryptoResolver for TriesResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(AwsRandom))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(Dh25519 {
                peer_dh: self.peer_dh.clone(),
                memo: self.memo.clone(),
                ops: self.key_ops.clone(),
                ..Dh25519::default()
            })),
            _ => DefaultResolver.resolve_dh(choice),
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        let inner = DefaultResolver.resolve_hash(choice)?;
        Some(match &self.memo {
            Some(memo) => Box::new(TriesHash {
                inner,
                memo: memo.clone(),
            }),
            None => inner,
        })
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        Some(Box::new(HandshakeCipher::new(*choice)))
    }
}

/// snow's hash whose HKDF looks in the tries' memo first: with one private key, every try
/// derives the same chaining key from the same `es` (Noise's chaining key does not depend
/// on the prologue or the pre-message keys), so only the first try computes it.
struct TriesHash {
    inner: Box<dyn Hash>,
    memo: Arc<TriesMemo>,
}

impl Hash for TriesHash {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn block_len(&self) -> usize {
        self.inner.block_len()
    }

    fn hash_len(&self) -> usize {
        self.inner.hash_len()
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn input(&mut self, data: &[u8]) {
        self.inner.input(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        self.inner.result(out);
    }

    fn hkdf(
        &mut self,
        chaining_key: &[u8],
        input_key_material: &[u8],
        outputs: usize,
        out1: &mut [u8],
        out2: &mut [u8],
        out3: &mut [u8],
    ) {
        let len = self.hash_len();
        let Some(key) = HkdfKey::new(chaining_key, input_key_material, outputs) else {
            return self
                .inner
                .hkdf(chaining_key, input_key_material, outputs, out1, out2, out3);
        };
        let outs = [out1, out2, out3];
        if let Some(found) = self.memo.hkdf_get(&key) {
            for (i, out) in outs.into_iter().enumerate().take(outputs) {
                out[..len].copy_from_slice(&found[i * MAX_HASH..i * MAX_HASH + len]);
            }
            return;
        }
        let [out1, out2, out3] = outs;
        self.inner
            .hkdf(chaining_key, input_key_material, outputs, out1, out2, out3);
        let mut found = Zeroizing::new([0u8; 3 * MAX_HASH]);
        for (i, out) in [&*out1, &*out2, &*out3]
            .into_iter()
            .enumerate()
            .take(outputs)
        {
            found[i * MAX_HASH..i * MAX_HASH + len].copy_from_slice(&out[..len]);
        }
        self.memo.hkdf_put(key, found);
    }
}

/// snow's largest hash output (BLAKE2b, SHA512).
const MAX_HASH: usize = 64;

/// What an HKDF was asked: number of outputs, chaining key, input key material (each at
/// most [`MAX_HASH`] bytes, as in every Noise HKDF).
struct HkdfKey {
    bytes: Zeroizing<[u8; 2 + 2 * MAX_HASH]>,
    len: usize,
}

impl HkdfKey {
    fn new(chaining_key: &[u8], input_key_material: &[u8], outputs: usize) -> Option<Self> {
        let (ck, ikm) = (chaining_key.len(), input_key_material.len());
        if ck > MAX_HASH || ikm > MAX_HASH {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; 2 + 2 * MAX_HASH]);
        bytes[0] = outputs as u8;
        bytes[1] = ck as u8;
        bytes[2..2 + ck].copy_from_slice(chaining_key);
        bytes[2 + ck..2 + ck + ikm].copy_from_slice(input_key_material);
        Some(HkdfKey {
            bytes,
            len: 2 + ck + ikm,
        })
    }

    /// Compares without an early exit: both sides are secrets.
    fn matches(&self, other: &HkdfKey) -> bool {
        self.len == other.len
            && self.bytes[..self.len]
                .iter()
                .zip(other.bytes[..other.len].iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Most HKDF results a [`TriesMemo`] keeps: two per try (the `es` and the `ss` mix of KK)
/// for the most tries nginx allows, with room to spare.
const HKDF_ENTRIES: usize = 2 * super::requirements::MAX_TRIED_PEER_KEYS + MEMO_ENTRIES;

/// A DH result: the shared secret, or `None` when the other key is a low-order point.
type Shared = Option<Zeroizing<[u8; 32]>>;

/// X25519 of `key` with `peer`; every agreement the module does goes through here.
fn agree(key: &PrivateKey, peer: &[u8; 32]) -> Shared {
    #[cfg(test)]
    AGREEMENTS.with(|n| n.set(n.get() + 1));
    let mut out = Zeroizing::new([0u8; 32]);
    // aws-lc refuses an all-zero result (a low-order peer point).
    agreement::agree(key, UnparsedPublicKey::new(&X25519, peer), (), |shared| {
        out.copy_from_slice(shared);
        Ok(())
    })
    .ok()
    .map(|()| out)
}

#[cfg(test)]
thread_local! {
    static AGREEMENTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// X25519 agreements computed on this thread so far (tests bound what a message costs).
#[cfg(test)]
pub(crate) fn agreements() -> usize {
    AGREEMENTS.with(|n| n.get())
}

/// A private key held to answer X25519 requests (the key agent's side of
/// [`crate::core::key_agent`]): loaded once, its public key known.
pub struct HeldKey {
    key: PrivateKey,
    public: [u8; 32],
}

impl HeldKey {
    /// `None` when aws-lc cannot load the key.
    pub fn new(secret: &Secret) -> Option<Self> {
        let key = PrivateKey::from_private_key(&X25519, secret.as_bytes()).ok()?;
        let public = key.compute_public_key().ok()?.as_ref().try_into().ok()?;
        Some(HeldKey { key, public })
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// X25519 with `point`; `None` for a low-order point (an all-zero result).
    pub fn dh(&self, point: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        agree(&self.key, point)
    }
}

impl fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeldKey({})", super::keys::fingerprint(&self.public))
    }
}

/// The DH of each of our static keys with each configured peer key, computed once at
/// configuration time (`ss` of a KK first message, for every pair the responder tries).
/// Looked up by our private key's bytes (our own keys, compared in memory) and the peer key.
pub struct PeerKeyDh {
    privates: Vec<Zeroizing<[u8; 32]>>,
    peers: Vec<[u8; 32]>,
    /// Row-major: `shared[row * peers.len() + column]`.
    shared: Vec<Shared>,
}

impl PeerKeyDh {
    /// Computes `privates.len() × peers.len()` DH; a key aws-lc cannot load gets no row.
    pub fn new<'a>(privates: impl IntoIterator<Item = &'a Secret>, peers: &[[u8; 32]]) -> Self {
        let mut table = PeerKeyDh {
            privates: Vec::new(),
            peers: peers.to_vec(),
            shared: Vec::new(),
        };
        for private in privates {
            let Some((key, _)) = load(private.as_bytes()) else {
                continue;
            };
            table.privates.push(Zeroizing::new(*private.as_bytes()));
            table
                .shared
                .extend(peers.iter().map(|peer| agree(&key, peer)));
        }
        table
    }

    /// How many results it holds.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    fn row_of(&self, private: &[u8; 32]) -> Option<usize> {
        self.privates.iter().position(|k| **k == *private)
    }

    fn get(&self, row: usize, peer: &[u8; 32]) -> Option<&Shared> {
        let column = self.peers.iter().position(|k| k == peer)?;
        self.shared.get(row * self.peers.len() + column)
    }
}

impl fmt::Debug for PeerKeyDh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PeerKeyDh({} keys × {} peer keys)",
            self.privates.len(),
            self.peers.len()
        )
    }
}

/// Most results a [`TriesMemo`] keeps: one per private key a responder may try
/// (`noise_private_key` allows 8), with room to spare; beyond it, DH are computed.
const MEMO_ENTRIES: usize = 16;

/// The DH and HKDF results of one handshake message's tries (see the module doc): a DH keyed
/// on our key's identity (the loaded aws-lc key, held here so it cannot be freed and reused)
/// and the peer's bytes, an HKDF on its inputs. [`TriesMemo::close`] wipes it and stops it
/// for good.
#[derive(Default)]
pub struct TriesMemo {
    state: Mutex<MemoState>,
}

#[derive(Default)]
struct MemoState {
    closed: bool,
    entries: Vec<(Arc<PrivateKey>, [u8; 32], Shared)>,
    hkdf: Vec<(HkdfKey, Zeroizing<[u8; 3 * MAX_HASH]>)>,
}

impl TriesMemo {
    pub fn new() -> Arc<Self> {
        Arc::new(TriesMemo::default())
    }

    /// Forgets every result (their bytes are wiped) and keeps no more.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
            state.entries.clear();
            state.hkdf.clear();
        }
    }

    fn hkdf_get(&self, key: &HkdfKey) -> Option<Zeroizing<[u8; 3 * MAX_HASH]>> {
        let state = self.state.lock().ok()?;
        state
            .hkdf
            .iter()
            .find(|(k, _)| k.matches(key))
            .map(|(_, found)| found.clone())
    }

    fn hkdf_put(&self, key: HkdfKey, found: Zeroizing<[u8; 3 * MAX_HASH]>) {
        if let Ok(mut state) = self.state.lock() {
            if !state.closed && state.hkdf.len() < HKDF_ENTRIES {
                state.hkdf.push((key, found));
            }
        }
    }

    fn get(&self, key: &Arc<PrivateKey>, peer: &[u8; 32]) -> Option<Shared> {
        let state = self.state.lock().ok()?;
        state
            .entries
            .iter()
            .find(|(k, p, _)| Arc::ptr_eq(k, key) && p == peer)
            .map(|(_, _, shared)| shared.clone())
    }

    fn put(&self, key: &Arc<PrivateKey>, peer: &[u8; 32], shared: &Shared) {
        if let Ok(mut state) = self.state.lock() {
            if !state.closed && state.entries.len() < MEMO_ENTRIES {
                state.entries.push((key.clone(), *peer, shared.clone()));
            }
        }
    }
}

/// Ephemeral keys' randomness from aws-lc's DRBG (seeded from the OS, reseeded across
/// `fork`, as nginx's workers are): no `getrandom` syscall per key, as snow's default costs.
struct AwsRandom;

impl Random for AwsRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        aws_lc_rs::rand::fill(dest).map_err(|_| snow::Error::Rng)
    }
}

/// The handshake's AEAD (snow's `CipherState` primitive) on aws-lc-rs: ChaCha20-Poly1305
/// with a little-endian nonce counter, AES-256-GCM with a big-endian one (Noise §12). The
/// key is expanded once per `set`, not per message.
struct HandshakeCipher {
    choice: CipherChoice,
    key: Option<aead::LessSafeKey>,
}

impl HandshakeCipher {
    fn new(choice: CipherChoice) -> Self {
        HandshakeCipher { choice, key: None }
    }

    fn nonce(&self, n: u64) -> aead::Nonce {
        let mut bytes = [0u8; aead::NONCE_LEN];
        bytes[4..].copy_from_slice(&match self.choice {
            CipherChoice::AESGCM => n.to_be_bytes(),
            CipherChoice::ChaChaPoly => n.to_le_bytes(),
        });
        aead::Nonce::assume_unique_for_key(bytes)
    }
}

impl Cipher for HandshakeCipher {
    fn name(&self) -> &'static str {
        match self.choice {
            CipherChoice::AESGCM => "AESGCM",
            CipherChoice::ChaChaPoly => "ChaChaPoly",
        }
    }

    fn set(&mut self, key: &[u8; 32]) {
        let alg = match self.choice {
            CipherChoice::AESGCM => &aead::AES_256_GCM,
            CipherChoice::ChaChaPoly => &aead::CHACHA20_POLY1305,
        };
        self.key = aead::UnboundKey::new(alg, key)
            .ok()
            .map(aead::LessSafeKey::new);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        let (Some(key), true) = (&self.key, out.len() >= len + TAG_LEN) else {
            return 0; // snow sets a key and sizes `out` before it encrypts
        };
        out[..len].copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(
            self.nonce(nonce),
            aead::Aad::from(authtext),
            &mut out[..len],
        ) {
            Ok(tag) => {
                out[len..len + TAG_LEN].copy_from_slice(tag.as_ref());
                len + TAG_LEN
            }
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let Some(key) = &self.key else {
            return Err(snow::Error::Decrypt);
        };
        let Some(len) = ciphertext.len().checked_sub(TAG_LEN) else {
            return Err(snow::Error::Decrypt);
        };
        if out.len() < len {
            return Err(snow::Error::Decrypt);
        }
        // aws-lc opens in place over ciphertext and tag together: in `out` when it has room
        // for the tag too (snow's buffers do), else in a copy.
        let n = ciphertext.len();
        if out.len() >= n {
            out[..n].copy_from_slice(ciphertext);
            key.open_in_place(self.nonce(nonce), aead::Aad::from(authtext), &mut out[..n])
                .map_err(|_| snow::Error::Decrypt)?;
            return Ok(len);
        }
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain = key
            .open_in_place(self.nonce(nonce), aead::Aad::from(authtext), &mut buf)
            .map_err(|_| snow::Error::Decrypt)?;
        out[..len].copy_from_slice(plain);
        Ok(len)
    }
}

const TAG_LEN: usize = 16;

/// An X25519 key pair on aws-lc-rs. snow hands us raw private bytes (`set`, for static
/// keys) or asks for a fresh pair (`generate`, for ephemeral keys); either way the aws-lc
/// key is built once and reused for every DH of the handshake.
#[derive(Default)]
struct Dh25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    key: Option<Arc<PrivateKey>>,
    /// A static key (`set`): its DH may come from `peer_dh` and `memo`. Ephemeral keys'
    /// never do (they are fresh for every handshake).
    is_static: bool,
    /// Our key's row in `peer_dh`, found once at `set`.
    row: Option<usize>,
    peer_dh: Option<Arc<PeerKeyDh>>,
    memo: Option<Arc<TriesMemo>>,
    /// A delegated handshake's state ([`KeyOps`]).
    ops: Option<Arc<KeyOps>>,
    /// A static key held by the key agent: its index in `ops`; no private key here.
    agent: Option<usize>,
    /// An ephemeral key of a delegated handshake: its index in `ops`.
    ephemeral: Option<usize>,
}

/// Static keys already loaded on this thread: building an aws-lc key computes its public
/// key (a base-point multiplication, a tenth of a handshake), and a server sets the same
/// static key for every handshake. Bounded; the evicted key's bytes are wiped. (The lookup
/// compares our own keys with each other, in memory: nothing a peer can time.)
struct LoadedKey {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    key: Arc<PrivateKey>,
}

/// Enough for a server rotating through 8 keys (`noise_private_key`) plus upstream keys.
const LOADED_KEYS: usize = 16;

thread_local! {
    static LOADED: RefCell<Vec<LoadedKey>> = const { RefCell::new(Vec::new()) };
}

fn load(private: &[u8; 32]) -> Option<(Arc<PrivateKey>, [u8; 32])> {
    let key = PrivateKey::from_private_key(&X25519, private).ok()?;
    let public = key.compute_public_key().ok()?;
    let public: [u8; 32] = public.as_ref().try_into().ok()?;
    Some((Arc::new(key), public))
}

impl Dh25519 {
    fn install(&mut self, loaded: Option<(Arc<PrivateKey>, [u8; 32])>) {
        (self.key, self.public) = match loaded {
            Some((key, public)) => (Some(key), public),
            None => (None, [0; 32]),
        };
    }

    /// Loads a static key, from the thread's cache when it was loaded before.
    fn load_static(&mut self) {
        let cached = LOADED.with(|loaded| {
            let loaded = loaded.borrow();
            loaded
                .iter()
                .find(|k| *k.private == *self.private)
                .map(|k| (k.key.clone(), k.public))
        });
        if cached.is_some() {
            return self.install(cached);
        }
        let fresh = load(&self.private);
        if let Some((key, public)) = &fresh {
            LOADED.with(|loaded| {
                let mut loaded = loaded.borrow_mut();
                if loaded.len() == LOADED_KEYS {
                    loaded.remove(0);
                }
                loaded.push(LoadedKey {
                    private: self.private.clone(),
                    public: *public,
                    key: key.clone(),
                });
            });
        }
        self.install(fresh);
    }
}

impl Dh for Dh25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        self.agent = self.ops.as_ref().and_then(|ops| ops.agent_key(privkey));
        self.ephemeral = None;
        if let Some(index) = self.agent {
            // The negotiator names an agent key by its public key (see key_agent).
            self.private.fill(0);
            self.key = None;
            self.public = self.ops.as_ref().map_or([0; 32], |ops| ops.keys()[index]);
            self.is_static = true;
            self.row = None;
            return;
        }
        let n = privkey.len().min(32);
        self.private.fill(0);
        self.private[..n].copy_from_slice(&privkey[..n]);
        self.load_static();
        self.is_static = true;
        self.row = self
            .peer_dh
            .as_ref()
            .and_then(|table| table.row_of(&self.private));
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.agent = None;
        if let Some(ops) = self.ops.clone() {
            let fresh = || {
                let mut private = Zeroizing::new([0u8; 32]);
                rng.try_fill_bytes(&mut private[..]).ok()?;
                let (key, public) = load(&private)?;
                Some(Ephemeral {
                    private,
                    key,
                    public,
                })
            };
            let (index, e) = ops.next_ephemeral(fresh).ok_or(snow::Error::Rng)?;
            self.private = e.private;
            self.install(Some((e.key, e.public)));
            self.ephemeral = Some(index);
            self.is_static = false;
            self.row = None;
            return Ok(());
        }
        rng.try_fill_bytes(&mut self.private[..])?;
        let fresh = load(&self.private);
        self.install(fresh);
        self.is_static = false;
        self.row = None;
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        if let (Some(index), Some(ops)) = (self.agent, &self.ops) {
            // The low-order check comes first: the agent is never asked about such a point.
            let (Some(peer), true) = (
                pubkey.get(..32).and_then(|p| <&[u8; 32]>::try_from(p).ok()),
                out.len() >= 32,
            ) else {
                return Err(snow::Error::Dh);
            };
            if is_low_order(peer) {
                return Err(snow::Error::Dh);
            }
            let result = ops.result_or_ask(index, peer).ok_or(snow::Error::Dh)?;
            out[..32].copy_from_slice(&result);
            return Ok(());
        }
        let (Some(key), Some(peer), true) = (
            self.key.as_ref(),
            pubkey.get(..32).and_then(|p| <&[u8; 32]>::try_from(p).ok()),
            out.len() >= 32,
        ) else {
            return Err(snow::Error::Dh);
        };
        let stored = if self.is_static {
            let configured = match (&self.peer_dh, self.row) {
                (Some(table), Some(row)) => table.get(row, peer).cloned(),
                _ => None,
            };
            configured.or_else(|| self.memo.as_ref().and_then(|m| m.get(key, peer)))
        } else {
            match (self.ephemeral, &self.ops) {
                (Some(index), Some(ops)) => ops.ephemeral_dh(index, peer),
                _ => None,
            }
        };
        let shared = match stored {
            Some(shared) => shared,
            None => {
                let shared = agree(key, peer);
                if let (true, Some(memo)) = (self.is_static, &self.memo) {
                    memo.put(key, peer, &shared);
                }
                if let (Some(index), Some(ops)) = (self.ephemeral, &self.ops) {
                    ops.put_ephemeral_dh(index, peer, &shared);
                }
                shared
            }
        };
        let shared = shared.ok_or(snow::Error::Dh)?;
        out[..32].copy_from_slice(&shared[..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::Secret;

    fn pair(private: [u8; 32]) -> Dh25519 {
        let mut dh = Dh25519::default();
        dh.set(&private);
        dh
    }

    #[test]
    fn matches_rfc7748_and_keys_public_key() {
        // RFC 7748 section 6.1.
        let a: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let b: [u8; 32] =
            hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
                .unwrap()
                .try_into()
                .unwrap();
        let (alice, bob) = (pair(a), pair(b));
        assert_eq!(alice.pubkey(), Secret::from_bytes(a).public_key());
        let mut k1 = [0u8; 32];
        let mut k2 = [0u8; 32];
        alice.dh(bob.pubkey(), &mut k1).unwrap();
        bob.dh(alice.pubkey(), &mut k2).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(
            hex::encode(k1),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn static_keys_are_loaded_once_and_the_cache_is_bounded() {
        let first = pair([11; 32]);
        let again = pair([11; 32]);
        assert!(Arc::ptr_eq(
            first.key.as_ref().unwrap(),
            again.key.as_ref().unwrap()
        ));
        assert_eq!(first.pubkey(), Secret::from_bytes([11; 32]).public_key());
        for b in 100..100 + LOADED_KEYS as u8 + 3 {
            let dh = pair([b; 32]);
            assert_eq!(dh.pubkey(), Secret::from_bytes([b; 32]).public_key());
        }
        assert_eq!(LOADED.with(|l| l.borrow().len()), LOADED_KEYS);
        let mut fresh = Dh25519::default();
        fresh
            .generate(&mut *DefaultResolver.resolve_rng().unwrap())
            .unwrap();
        assert_eq!(
            fresh.pubkey(),
            Secret::from_bytes(fresh.privkey().try_into().unwrap()).public_key()
        );
    }

    #[test]
    fn handshake_cipher_round_trips_with_and_without_room_for_the_tag() {
        for choice in [CipherChoice::ChaChaPoly, CipherChoice::AESGCM] {
            let mut c = HandshakeCipher::new(choice);
            c.set(&[5; 32]);
            let mut sealed = [0u8; 3 + TAG_LEN];
            assert_eq!(c.encrypt(7, b"ad", b"abc", &mut sealed), sealed.len());
            let mut roomy = [0u8; 64];
            assert_eq!(c.decrypt(7, b"ad", &sealed, &mut roomy), Ok(3));
            assert_eq!(&roomy[..3], b"abc");
            let mut tight = [0u8; 3];
            assert_eq!(c.decrypt(7, b"ad", &sealed, &mut tight), Ok(3));
            assert_eq!(&tight, b"abc");
            let mut bad = sealed;
            bad[0] ^= 1;
            assert!(c.decrypt(7, b"ad", &bad, &mut roomy).is_err());
            assert!(
                c.decrypt(8, b"ad", &sealed, &mut roomy).is_err(),
                "nonce is bound"
            );
            assert!(c
                .decrypt(7, b"ad", &sealed[..TAG_LEN - 1], &mut roomy)
                .is_err());
        }
    }

    #[test]
    fn tries_hash_gives_what_the_hash_gives_and_forgets_on_close() {
        let memo = TriesMemo::new();
        let resolver = TriesResolver {
            peer_dh: None,
            memo: Some(memo.clone()),
            key_ops: None,
        };
        let run = |h: &mut dyn Hash, ikm: &[u8]| {
            let (mut a, mut b, mut c) = ([0u8; 64], [0u8; 64], [0u8; 64]);
            h.hkdf(&[7; 32], ikm, 3, &mut a, &mut b, &mut c);
            (a, b, c)
        };
        let mut plain = DefaultResolver.resolve_hash(&HashChoice::Blake2s).unwrap();
        let mut tries = resolver.resolve_hash(&HashChoice::Blake2s).unwrap();
        let want = run(&mut *plain, &[1; 32]);
        assert_eq!(run(&mut *tries, &[1; 32]), want, "computed");
        assert_eq!(run(&mut *tries, &[1; 32]), want, "from the memo");
        assert_ne!(run(&mut *tries, &[2; 32]), want, "other input");
        assert_eq!(memo.state.lock().unwrap().hkdf.len(), 2);
        memo.close();
        assert!(memo.state.lock().unwrap().hkdf.is_empty());
        assert_eq!(run(&mut *tries, &[1; 32]), want, "closed: computed again");
        assert!(memo.state.lock().unwrap().hkdf.is_empty(), "and not kept");
    }

    #[test]
    fn low_order_peer_point_fails() {
        let alice = pair([9; 32]);
        let mut out = [0u8; 32];
        for point in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert!(alice.dh(&point, &mut out).is_err());
        }
        assert!(alice.dh(&[1, 2, 3], &mut out).is_err(), "short key");
    }
}
