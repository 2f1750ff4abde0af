//! Signing keys and trusted keys for the remote store's action records (ed25519, as Nix signs
//! its binary-cache entries).
//!
//! A key has a name, so that a reader can say whose signature it found. Written as text:
//! `NAME:BASE64`, the public key (32 bytes) for `trusted_keys`, the secret seed (32 bytes) in a
//! signing key file (mode 0600).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

/// Put before every signed payload: a signature of a record is good for nothing else.
const SIGNATURE_DOMAIN: &[u8] = b"vmbuild action record v1\0";

/// What is wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key is written NAME:BASE64, and `{shown}` is not")]
    Malformed { shown: String },
    #[error("the key `{name}` is not {expected} bytes of base64")]
    Length { name: String, expected: usize },
    #[error("the key name `{0}` is not a name (letters, digits, `.`, `_`, `-`)")]
    Name(String),
    #[error("cannot read the signing key `{path}`")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the signing key `{path}`")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A builder's signing key.
pub struct SigningKey {
    pub name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, secret not shown)", self.name)
    }
}

/// A public key a reader trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub name: String,
    key: ed25519_dalek::VerifyingKey,
}

/// One signature on a record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signature {
    /// The name of the key that made it.
    pub key: String,
    /// base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

fn split_named<'a>(text: &'a str, shown: &str) -> Result<(&'a str, Vec<u8>), KeyError> {
    let (name, encoded) = text.trim().split_once(':').ok_or(KeyError::Malformed {
        shown: shown.to_string(),
    })?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(KeyError::Name(name.to_string()));
    }
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| KeyError::Malformed {
            shown: shown.to_string(),
        })?;
    Ok((name, bytes))
}

impl SigningKey {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<SigningKey, KeyError> {
        let seed: [u8; 32] = rand::random();
        SigningKey::parse(&format!("{name}:{}", BASE64.encode(seed)))
    }

    /// Parse `NAME:BASE64(seed)`.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        // The text is secret: an error shows its name at most.
        let shown = text.split(':').next().unwrap_or("").to_string() + ":…";
        let (name, bytes) = split_named(text, &shown)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length {
            name: name.to_string(),
            expected: 32,
        })?;
        Ok(SigningKey {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Read a signing key file.
    pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SigningKey::parse(&text)
    }

    /// Write the key to a new file `path`, readable by its owner only.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = format!("{}:{}\n", self.name, BASE64.encode(self.key.to_bytes()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The public half, as readers list it in `trusted_keys`.
    pub fn public(&self) -> TrustedKey {
        TrustedKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, payload: &[u8]) -> Signature {
        let signature = self.key.sign(&domain(payload));
        Signature {
            key: self.name.clone(),
            sig: BASE64.encode(signature.to_bytes()),
        }
    }
}

impl TrustedKey {
    /// Parse `NAME:BASE64(public key)`.
    pub fn parse(text: &str) -> Result<TrustedKey, KeyError> {
        let (name, bytes) = split_named(text, text.trim())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length {
            name: name.to_string(),
            expected: 32,
        })?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Length {
                name: name.to_string(),
                expected: 32,
            })?;
        Ok(TrustedKey {
            name: name.to_string(),
            key,
        })
    }

    /// Whether `signature` is this key's signature of `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &Signature) -> bool {
        if signature.key != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(&signature.sig) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify(&domain(payload), &signature).is_ok()
    }
}

impl std::fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.to_bytes()))
    }
}

fn domain(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + payload.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(payload);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_payload() {
        let a = SigningKey::generate("builder-a").unwrap();
        let b = SigningKey::generate("builder-b").unwrap();
        let signature = a.sign(b"payload");
        assert!(a.public().verifies(b"payload", &signature));
        assert!(!a.public().verifies(b"payload!", &signature));
        assert!(!b.public().verifies(b"payload", &signature));
        // The same key material under another name is another key.
        let renamed = TrustedKey::parse(&a.public().to_string().replace("builder-a", "x")).unwrap();
        assert!(!renamed.verifies(b"payload", &signature));
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("ci-1").unwrap();
        let path = dir.path().join("key");
        key.write_new(&path).unwrap();
        let read = SigningKey::read(&path).unwrap();
        assert_eq!(read.public(), key.public());
        assert_eq!(
            TrustedKey::parse(&key.public().to_string()).unwrap(),
            key.public()
        );
        assert!(key.write_new(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn a_bad_secret_key_is_not_echoed() {
        let error = SigningKey::parse("ci:c2VjcmV0LXNlY3JldA==").unwrap_err();
        assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
        assert!(matches!(
            TrustedKey::parse("no colon"),
            Err(KeyError::Malformed { .. })
        ));
    }
}
