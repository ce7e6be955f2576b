//! Keys and key files.
//!
//! * A private key (or psk) file holds the base64 of 32 bytes on one line, WireGuard style
//!   (`#` comments and blank lines around it are allowed); a file of exactly 32 raw bytes is
//!   accepted too.
//! * A public-key list holds one base64 key per line; `#` starts a comment (also after a key);
//!   blank lines are ignored.
//!
//! Every error names the file and, where there is one, the line. Secret bytes live in
//! [`Secret`], which zeroizes on drop.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

/// Length of every X25519 key and psk.
pub const KEY_LEN: usize = 32;

/// Private keys a `noise_listen` server may hold at once (key rotation: each costs a try,
/// one DH, on a first message made for another one).
pub const MAX_PRIVATE_KEYS: usize = 8;

/// A 32-byte secret (private key or psk), wiped when dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; KEY_LEN]>);

impl Secret {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The X25519 public key of this private key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(*self.0).to_bytes()
    }

    /// A fresh random private key.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|e| KeyFileError {
            path: PathBuf::from("<random>"),
            line: None,
            reason: format!("no randomness: {e}"),
        })?;
        Ok(Secret(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A set of trusted public keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<[u8; KEY_LEN]>,
}

impl KeySet {
    pub fn new(mut keys: Vec<[u8; KEY_LEN]>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        KeySet { keys }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        <&[u8; KEY_LEN]>::try_from(key).is_ok_and(|k| self.keys.binary_search(k).is_ok())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8; KEY_LEN]> {
        self.keys.iter()
    }
}

/// A key file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError {
    pub path: PathBuf,
    /// 1-based line number, when the problem is on a line.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// Base64 of a key, as printed by `noisesocket pubkey` and logged in `$noise_client_key`.
pub fn encode_key(key: &[u8]) -> String {
    STANDARD.encode(key)
}

/// A public key's fingerprint for logs: `SHA256:` and the first 8 bytes of its SHA-256, in
/// hex. Debug logs name keys by fingerprint; a full key appears only where an operator must
/// copy it (the error line of a refused key, `$noise_client_key`).
pub fn fingerprint(key: &[u8; KEY_LEN]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("SHA256:{hex}")
}

/// Decodes one base64 key of exactly 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| "not a base64 key".to_string())?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("key is {} bytes, expected {KEY_LEN}", bytes.len()))
}

/// Strips a `#` comment and surrounding blanks from a line.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or("").trim()
}

/// Largest private key or psk file read: a key line with generous comments.
pub const MAX_SECRET_FILE: u64 = 4 << 10;
/// Largest public-key list read (about 20,000 keys with comments).
pub const MAX_LIST_FILE: u64 = 1 << 20;

/// Reads a whole file of at most `cap` bytes: a larger one (or `/dev/zero`) is refused
/// after reading `cap + 1` bytes, never read to its end.
fn read(path: &Path, cap: u64) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    use std::io::Read;
    let fail = |reason: String| KeyFileError {
        path: path.to_path_buf(),
        line: None,
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut data = Zeroizing::new(Vec::new());
    file.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| fail(e.to_string()))?;
    if data.len() as u64 > cap {
        return Err(fail(format!("larger than {cap} bytes: not a key file")));
    }
    Ok(data)
}

/// Parses the text of a private key or psk file (see the module doc).
pub fn parse_secret(path: &Path, data: &[u8]) -> Result<Secret, KeyFileError> {
    let err = |line, reason: String| KeyFileError {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(_) if data.len() == KEY_LEN => {
            let mut bytes = [0u8; KEY_LEN];
            bytes.copy_from_slice(data);
            return Ok(Secret::from_bytes(bytes));
        }
        Err(_) => {
            return Err(err(
                None,
                format!("neither base64 text nor {KEY_LEN} raw bytes"),
            ))
        }
    };
    let mut found: Option<(usize, Secret)> = None;
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let body = content(line);
        if body.is_empty() {
            continue;
        }
        if found.is_some() {
            return Err(err(Some(line_no), "more than one key in the file".into()));
        }
        match decode_key(body) {
            Ok(key) => found = Some((line_no, Secret::from_bytes(key))),
            Err(_) if data.len() == KEY_LEN => {
                // 32 raw bytes that happen to be valid UTF-8.
                let mut bytes = [0u8; KEY_LEN];
                bytes.copy_from_slice(data);
                return Ok(Secret::from_bytes(bytes));
            }
            Err(reason) => return Err(err(Some(line_no), reason)),
        }
    }
    found
        .map(|(_, key)| key)
        .ok_or_else(|| err(None, "no key in the file".into()))
}

/// Loads a private key or psk file.
pub fn load_secret(path: &Path) -> Result<Secret, KeyFileError> {
    let data = read(path, MAX_SECRET_FILE)?;
    parse_secret(path, &data)
}

/// Parses the text of a public-key list (see the module doc); at least one key.
pub fn parse_key_list(path: &Path, data: &[u8]) -> Result<KeySet, KeyFileError> {
    let keys = parse_keys(path, data)?;
    // An empty list would refuse everyone (or trust no back end): surely a mistake.
    if keys.is_empty() {
        return Err(KeyFileError {
            path: path.to_path_buf(),
            line: None,
            reason: "no key in the file".into(),
        });
    }
    Ok(keys)
}

/// The keys of a public-key list, possibly none.
fn parse_keys(path: &Path, data: &[u8]) -> Result<KeySet, KeyFileError> {
    let err = |line, reason: String| KeyFileError {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::str::from_utf8(data).map_err(|_| err(None, "not text".into()))?;
    let mut keys = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let body = content(line);
        if body.is_empty() {
            continue;
        }
        keys.push(decode_key(body).map_err(|reason| err(Some(idx + 1), reason))?);
    }
    Ok(KeySet::new(keys))
}

/// Loads a public-key list.
pub fn load_key_list(path: &Path) -> Result<KeySet, KeyFileError> {
    let data = read(path, MAX_LIST_FILE)?;
    parse_key_list(path, &data)
}

/// Loads a deny list (revoked keys) in the same format; empty is fine: nobody is revoked.
pub fn load_deny_list(path: &Path) -> Result<KeySet, KeyFileError> {
    let data = read(path, MAX_LIST_FILE)?;
    parse_keys(path, &data)
}

/// Loads one public key from a file (a list with exactly one key) or takes it as base64 text.
pub fn load_public_key(file_or_base64: &str) -> Result<[u8; KEY_LEN], KeyFileError> {
    if let Ok(key) = decode_key(file_or_base64) {
        return Ok(key);
    }
    let path = Path::new(file_or_base64);
    let data = read(path, MAX_LIST_FILE)?;
    let text = std::str::from_utf8(&data).map_err(|_| KeyFileError {
        path: path.to_path_buf(),
        line: None,
        reason: "not text".into(),
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, content(l)))
        .filter(|(_, l)| !l.is_empty());
    let err = |line, reason: String| KeyFileError {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let (line_no, body) = lines
        .next()
        .ok_or_else(|| err(None, "no key in the file".into()))?;
    if let Some((extra, _)) = lines.next() {
        return Err(err(Some(extra), "more than one key in the file".into()));
    }
    decode_key(body).map_err(|reason| err(Some(line_no), reason))
}

/// The permission bits that make a secret file readable by group or others, if any.
#[cfg(unix)]
pub fn loose_permissions(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then_some(mode & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "YAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn private_key_text_and_raw() {
        let k = parse_secret(Path::new("k"), format!("# mine\n\n{KEY}\n").as_bytes()).unwrap();
        assert_eq!(k.as_bytes()[0], 0x60);
        let raw = [0xffu8; 32];
        assert_eq!(parse_secret(Path::new("k"), &raw).unwrap().as_bytes(), &raw);
    }

    #[test]
    fn private_key_errors_name_file_and_line() {
        let e = parse_secret(Path::new("/etc/k"), b"\n\nnot-a-key\n").unwrap_err();
        assert_eq!(e.to_string(), "/etc/k:3: not a base64 key");
        let e = parse_secret(Path::new("k"), b"AAAA\n").unwrap_err();
        assert_eq!(e.to_string(), "k:1: key is 3 bytes, expected 32");
        let e = parse_secret(Path::new("k"), format!("{KEY}\n{KEY}\n").as_bytes()).unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = parse_secret(Path::new("k"), b"# only a comment\n").unwrap_err();
        assert_eq!(e.to_string(), "k: no key in the file");
    }

    #[test]
    fn key_list() {
        let pk = encode_key(&[7u8; 32]);
        let text = format!("# trusted\n{KEY}  # laptop\n\n{pk}\n");
        let set = parse_key_list(Path::new("t"), text.as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&[7u8; 32]));
        assert!(!set.contains(&[8u8; 32]));
        let e = parse_key_list(Path::new("t"), format!("{pk}\nbad\n").as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "t:2: not a base64 key");
    }

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 section 6.1, Alice.
        let sk: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let pk = Secret::from_bytes(sk).public_key();
        assert_eq!(
            hex::encode(pk),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
