//! API keys in the vendor's format (`at_` + 29 of `[a-z0-9]`), their SHA-256 hashes (the only form
//! ever stored), and the other random identifiers (account ids, invitation tokens).

use rand::{CryptoRng, Rng};
use sha2::{Digest, Sha256};
use std::fmt;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const KEY_PREFIX: &str = "at_";
pub const KEY_BODY_LEN: usize = 29;
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_BODY_LEN;

/// A plaintext key. It exists only on its way to the user: `Debug` hides it, and nothing stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The plaintext, to show the user once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.hash().short())
    }
}

fn random_chars<R: CryptoRng + ?Sized>(rng: &mut R, n: usize, out: &mut String) {
    for _ in 0..n {
        // `random_range` is uniform over the range (no modulo bias).
        out.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
}

/// A new key from a CSPRNG: 29 × log2(36) ≈ 150 bits.
pub fn generate_key<R: CryptoRng + ?Sized>(rng: &mut R) -> ApiKey {
    let mut s = String::with_capacity(KEY_LEN);
    s.push_str(KEY_PREFIX);
    random_chars(rng, KEY_BODY_LEN, &mut s);
    ApiKey(s)
}

/// An opaque id with a readable prefix, e.g. `acc_` + 16 characters (≈ 83 bits).
pub fn generate_id<R: CryptoRng + ?Sized>(rng: &mut R, prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    random_chars(rng, 16, &mut s);
    s
}

/// A single-use invitation token (`inv_` + 40 characters, ≈ 207 bits); stored only as its hash.
pub fn generate_token<R: CryptoRng + ?Sized>(rng: &mut R) -> ApiKey {
    let mut s = String::with_capacity(44);
    s.push_str("inv_");
    random_chars(rng, 40, &mut s);
    ApiKey(s)
}

/// Whether a presented string can be a key at all. Anything else is refused as `key_unknown`
/// without a hash or a store look-up.
pub fn is_well_formed_key(s: &[u8]) -> bool {
    s.len() == KEY_LEN
        && s.starts_with(KEY_PREFIX.as_bytes())
        && s[KEY_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The `WWW-Authenticate` value of every 401 (RFC 9110 requires the field), on the data plane and
/// the APIs alike: a key or the operator token, as a bearer credential.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"tollgate\"";

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, the token
/// trimmed); `None` for another scheme or an empty token. The one parser of the data plane's
/// `bearer` key source, the account API's and the operator token.
#[inline]
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
        let t = value[7..].trim_ascii();
        (!t.is_empty()).then_some(t)
    } else {
        None
    }
}

/// SHA-256 of a key or token. Keys carry ~150 random bits, so an unsalted fast hash is safe here
/// (nothing to brute-force) and keeps look-ups at one hash per request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: impl AsRef<[u8]>) -> KeyHash {
        KeyHash(Sha256::digest(secret.as_ref()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyHash(out))
    }

    /// The first 8 hex characters: the only form of a key that may appear in a log line.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", self.short())
    }
}

/// Serialized as 64 lowercase hex characters.
impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyHash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        fn t(v: &str) -> Option<&str> {
            bearer_token(v.as_bytes()).map(|t| std::str::from_utf8(t).unwrap())
        }
        assert_eq!(t("Bearer at_x"), Some("at_x"));
        assert_eq!(t("bEaReR   at_x  "), Some("at_x"));
        for none in [
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic dXNlcg==",
            "Bearerat_x",
            "",
        ] {
            assert_eq!(t(none), None, "{none:?}");
        }
    }

    #[test]
    fn keys_have_the_vendor_format_and_differ() {
        let mut rng = rand::rng();
        let a = generate_key(&mut rng);
        let b = generate_key(&mut rng);
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert_eq!(k.expose().len(), 32);
            assert!(is_well_formed_key(k.expose().as_bytes()), "{}", k.expose());
        }
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn shape_check() {
        assert!(is_well_formed_key(b"at_abcdefghijklmnopqrstuvwxyz012"));
        assert!(!is_well_formed_key(b"at_abcdefghijklmnopqrstuvwxyz01"));
        assert!(!is_well_formed_key(b"at_Abcdefghijklmnopqrstuvwxyz012"));
        assert!(!is_well_formed_key(b"xx_abcdefghijklmnopqrstuvwxyz012"));
        assert!(!is_well_formed_key(b""));
    }

    #[test]
    fn hash_is_sha256_and_round_trips() {
        let h = KeyHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(h.short(), "ba7816bf");
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    #[test]
    fn ids_and_tokens() {
        let mut rng = rand::rng();
        let id = generate_id(&mut rng, "acc_");
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("acc_"));
        let t = generate_token(&mut rng);
        assert!(t.expose().starts_with("inv_"));
        assert_eq!(t.expose().len(), 44);
    }
}
