//! Sealing what shared ACME keeps in the store (account credentials, certificate keys, the
//! journal of an order in flight): AES-256-GCM under a key derived from `[cluster] secret` with
//! HKDF-SHA-256 and a fixed info string, so every instance with the same secret derives the same
//! key and nothing else can read or forge a blob. Each blob has a fresh random nonce, and the
//! store key it is written under is its associated data: a blob copied to another key (another
//! name set's certificate, say) does not open there.
//!
//! A blob is `version (1 byte) | nonce (12) | ciphertext and tag`.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Names what the derived key is for: another use of the same secret derives another key.
const INFO: &[u8] = b"gatehouse cluster acme blob v1";
/// A fixed salt (the secret is already high-entropy; the salt only separates domains).
const SALT: &[u8] = b"gatehouse-cluster";
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("the blob under {0} does not open with this `[cluster] secret` (another secret, or a blob moved from another key)")]
    Open(String),
    #[error("the blob under {0} is not one Gatehouse wrote (too short or an unknown version)")]
    Format(String),
    #[error("no random bytes for a nonce")]
    Random,
    #[error("cannot derive the store key from `[cluster] secret`")]
    Key,
}

/// The key derived from the cluster secret.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

/// `hkdf::KeyType` for 32 bytes of output.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// The sealer of `secret` (fails only if ring refuses a 32-byte output or key, which it
    /// does not).
    pub fn new(secret: &[u8]) -> Result<Sealer, CryptError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let mut bytes = [0u8; 32];
        let okm = prk.expand(&[INFO], Len32).map_err(|_| CryptError::Key)?;
        okm.fill(&mut bytes).map_err(|_| CryptError::Key)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CryptError::Key)?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `plain` sealed for the store key `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| CryptError::Random)?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + data.len());
        blob.push(VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&data);
        Ok(blob)
    }

    /// The plain bytes of `blob`, read under the store key `name`.
    pub fn open(&self, name: &str, blob: &[u8]) -> Result<Vec<u8>, CryptError> {
        let tag = AES_256_GCM.tag_len();
        if blob.len() < 1 + NONCE_LEN + tag || blob[0] != VERSION {
            return Err(CryptError::Format(name.to_string()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[1..=NONCE_LEN]);
        let mut data = blob[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| CryptError::Open(name.to_string()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_blob_opens_with_the_same_secret_and_key_name_only() {
        let sealer = Sealer::new(b"cluster-test-secret-0123456789").expect("key");
        let blob = sealer.seal("gh:acme:cert:a", b"private key").expect("seal");
        assert!(!blob.windows(11).any(|w| w == b"private key"));
        let same = Sealer::new(b"cluster-test-secret-0123456789").expect("key");
        assert_eq!(
            same.open("gh:acme:cert:a", &blob).expect("open"),
            b"private key"
        );
        // another secret
        let other = Sealer::new(b"another-secret-0123456789abcdef").expect("key");
        assert!(matches!(
            other.open("gh:acme:cert:a", &blob),
            Err(CryptError::Open(_))
        ));
        // moved to another key
        assert!(matches!(
            sealer.open("gh:acme:cert:b", &blob),
            Err(CryptError::Open(_))
        ));
        // tampered, truncated, unknown version
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(sealer.open("gh:acme:cert:a", &bad).is_err());
        assert!(matches!(
            sealer.open("k", &blob[..10]),
            Err(CryptError::Format(_))
        ));
        let mut v2 = blob.clone();
        v2[0] = 2;
        assert!(matches!(
            sealer.open("gh:acme:cert:a", &v2),
            Err(CryptError::Format(_))
        ));
    }

    #[test]
    fn each_seal_has_its_own_nonce() {
        let sealer = Sealer::new(b"cluster-test-secret-0123456789").expect("key");
        let (a, b) = (
            sealer.seal("k", b"x").expect("a"),
            sealer.seal("k", b"x").expect("b"),
        );
        assert_ne!(a, b);
    }
}
