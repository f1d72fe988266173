//! Keystone tokens the region signs and its sites check on their own,
//! offline included.
//!
//! A token is `rgt1.<claims>.<signature>`: the claims as JSON and an
//! Ed25519 signature over `rgt1.<claims>`, both base64url. The region keeps
//! the private key; its public keys and the audit ids of revoked tokens
//! reach every site in the intent document (`identity/region`, written by
//! the region alone), so a site that synced once checks region tokens with
//! no round trip. Times are Unix seconds.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "rgt1";

/// What a region token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub user_id: String,
    pub user_name: String,
    pub project_id: String,
    pub project_name: String,
    pub roles: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    /// Keystone's audit id: what a revocation names.
    pub audit_id: String,
    /// The region that signed it.
    pub region: String,
}

/// Why a token was refused. The messages are what a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was not signed by a key of this region")]
    BadSignature,
    #[error("the token expired at {0} (Unix time)")]
    Expired(i64),
    #[error("the token was revoked")]
    Revoked,
    #[error("this site has no keys from its region yet (it has not synced since enrollment); use a token of the site's own Keystone")]
    NoKeys,
    #[error("the signing key is unusable: {0}")]
    Key(String),
}

/// The region's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new key.
    pub fn generate() -> Result<Signer, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| TokenError::Key(e.to_string()))?;
        Signer::from_pkcs8(doc.as_ref())
    }

    /// A key kept as PKCS#8 bytes (see [`Signer::pkcs8`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Signer, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Signer {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key, base64url: what sites are given.
    pub fn public_key(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, claims: &TokenClaims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{body}");
        let sig = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }
}

/// What a site trusts of its region: the public keys and the revoked
/// tokens' audit ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    pub keys: Vec<String>,
    pub revoked: BTreeSet<String>,
}

/// Whether `token` looks like a region token (and should be checked here).
pub fn is_region_token(token: &str) -> bool {
    token.starts_with("rgt1.")
}

/// Checks a region token at `now`: signature by one of `trust.keys`, not
/// expired, not revoked.
pub fn verify(trust: &Trust, token: &str, now: i64) -> Result<TokenClaims, TokenError> {
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let body = signed
        .strip_prefix("rgt1.")
        .filter(|b| !b.contains('.'))
        .ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    if trust.keys.is_empty() {
        return Err(TokenError::NoKeys);
    }
    let signed_by_region = trust.keys.iter().any(|k| {
        B64.decode(k).is_ok_and(|key| {
            UnparsedPublicKey::new(&ED25519, key)
                .verify(signed.as_bytes(), &sig)
                .is_ok()
        })
    });
    if !signed_by_region {
        return Err(TokenError::BadSignature);
    }
    let claims: TokenClaims = B64
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.expires_at <= now {
        return Err(TokenError::Expired(claims.expires_at));
    }
    if trust.revoked.contains(&claims.audit_id) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> TokenClaims {
        TokenClaims {
            user_id: "admin".into(),
            user_name: "admin".into(),
            project_id: "region".into(),
            project_name: "admin".into(),
            roles: vec!["admin".into()],
            issued_at: 0,
            expires_at: exp,
            audit_id: "a1".into(),
            region: "eu".into(),
        }
    }

    #[test]
    fn a_site_checks_region_tokens_with_the_public_key_alone() {
        let signer = Signer::generate().unwrap();
        let again = Signer::from_pkcs8(signer.pkcs8()).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        let mut trust = Trust {
            keys: vec![
                Signer::generate().unwrap().public_key(),
                signer.public_key(),
            ],
            revoked: BTreeSet::new(),
        };
        let t = again.sign(&claims(100));
        assert!(is_region_token(&t));
        assert_eq!(verify(&trust, &t, 99).unwrap(), claims(100));
        assert_eq!(verify(&trust, &t, 100), Err(TokenError::Expired(100)));
        trust.revoked.insert("a1".into());
        assert_eq!(verify(&trust, &t, 99), Err(TokenError::Revoked));
        assert_eq!(verify(&Trust::default(), &t, 99), Err(TokenError::NoKeys));
    }

    #[test]
    fn forged_and_mangled_tokens_are_refused() {
        let signer = Signer::generate().unwrap();
        let trust = Trust {
            keys: vec![signer.public_key()],
            revoked: BTreeSet::new(),
        };
        let good = signer.sign(&claims(100));
        // Another key's token; the claims changed under the signature.
        let other = Signer::generate().unwrap().sign(&claims(100));
        assert_eq!(verify(&trust, &other, 1), Err(TokenError::BadSignature));
        let (_, sig) = good.rsplit_once('.').unwrap();
        let mut more = claims(100);
        more.roles.push("superuser".into());
        let body = B64.encode(serde_json::to_vec(&more).unwrap());
        let forged = format!("rgt1.{body}.{sig}");
        assert_eq!(verify(&trust, &forged, 1), Err(TokenError::BadSignature));
        for junk in [
            "",
            "rgt1",
            "rgt1..",
            "rgt1.x.y",
            "rgt1.a.b.c",
            "rst1.abc.def",
        ] {
            assert!(verify(&trust, junk, 1).is_err(), "{junk}");
        }
    }
}
