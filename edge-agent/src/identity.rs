//! Local identity: the bootstrap admin and the tokens this site signs.
//!
//! Tokens are self-contained and signed with HMAC-SHA256 under the site's
//! key (kept in the store), so they survive an agent restart and need no
//! lookup to validate: `rst1.<base64url claims>.<base64url mac>`. The
//! region's tokens (`rgt1.`, Ed25519) are accepted too, checked with the
//! region's public keys and revocation list as last synced (see
//! `api::authenticate`), so they work while the region is unreachable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::store::Identity;

const PREFIX: &str = "rst1";

/// Roles the bootstrap admin holds.
pub const ADMIN_ROLES: [&str; 3] = ["admin", "member", "reader"];

/// Why a credential or token was refused. Messages are what the client sees,
/// so they never say which part of a credential was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("The request you have made requires authentication.")]
    BadCredentials,
    #[error("The request you have made requires authentication: the token is malformed or was not issued by this site.")]
    BadToken,
    #[error("The request you have made requires authentication: the token expired at {0}.")]
    Expired(String),
    #[error("The request you have made requires authentication: the token was revoked.")]
    Revoked,
}

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub user_id: String,
    pub user_name: String,
    pub project_id: String,
    pub project_name: String,
    pub roles: Vec<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Audit id, as Keystone's `audit_ids`.
    pub audit_id: String,
    /// Whether the region signed it (not this site).
    #[serde(default)]
    pub from_region: bool,
}

impl Claims {
    /// A token the region signed, as this site uses it (checked with
    /// `roost_sync::token::verify` against the region's synced keys).
    pub fn from_region(c: roost_sync::token::TokenClaims) -> Claims {
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or_default();
        Claims {
            user_id: c.user_id,
            user_name: c.user_name,
            project_id: c.project_id,
            project_name: c.project_name,
            roles: c.roles,
            issued_at: at(c.issued_at),
            expires_at: at(c.expires_at),
            audit_id: c.audit_id,
            from_region: true,
        }
    }

    /// Whether the holder may change anything whatever the policy says:
    /// the region's viewer (a region token with neither admin nor member)
    /// only looks.
    pub fn region_viewer(&self) -> bool {
        self.from_region && !self.roles.iter().any(|r| r == "admin" || r == "member")
    }
}

/// Hashes a user's password (Argon2id, a PHC string with its salt).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|_| AuthError::BadCredentials)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::BadCredentials)
}

/// Checks a password against a hash from [`hash_password`]. With no hash
/// (an unknown user) it hashes anyway and says no, so the time taken does
/// not tell whether the user exists.
pub fn check_user_password(hash: Option<&str>, password: &str) -> Result<(), AuthError> {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    static DECOY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password("decoy password").unwrap_or_default());
    let (hash, real) = match hash {
        Some(h) => (h, true),
        None => (DECOY.as_str(), false),
    };
    let parsed = PasswordHash::new(hash).map_err(|_| AuthError::BadCredentials)?;
    let ok = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    if ok && real {
        Ok(())
    } else {
        Err(AuthError::BadCredentials)
    }
}

/// Whom a token is for: a user, scoped to a project, with its roles there.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user_id: String,
    pub user_name: String,
    pub project_id: String,
    pub project_name: String,
    pub roles: Vec<String>,
}

/// Checks credentials and issues and verifies tokens.
pub struct Authority {
    identity: Identity,
    admin_password: String,
    ttl: Duration,
    /// Audit ids of revoked tokens not yet expired: loaded from the store
    /// at start, added to after each revocation commits.
    revoked: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Revocation events: tokens of a subject (`user:<id>`,
    /// `project:<id>`) issued before the time are refused. Loaded from the
    /// store at start, added to after each event commits.
    events: std::sync::RwLock<std::collections::HashMap<String, DateTime<Utc>>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(identity: Identity, admin_password: String, ttl_secs: u64) -> Self {
        let ttl = Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 1000));
        Authority {
            identity,
            admin_password,
            ttl,
            revoked: Default::default(),
            events: Default::default(),
        }
    }

    /// Refuses every token of `subject` issued before `before` (after the
    /// event is in the store).
    pub fn revoke_subject(&self, subject: String, before: DateTime<Utc>) {
        let mut events = self.events.write().unwrap_or_else(|e| e.into_inner());
        let at = events.entry(subject).or_insert(before);
        *at = (*at).max(before);
    }

    /// Refuses the tokens with these audit ids from now on (after the
    /// revocation is in the store).
    pub fn revoked(&self, audit_ids: impl IntoIterator<Item = String>) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(audit_ids);
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.identity.token_key).expect("hmac takes any key length")
    }

    /// Checks the admin's password in constant time.
    pub fn check_password(&self, given: &str) -> Result<(), AuthError> {
        let digest = |s: &str| {
            let mut m = self.mac();
            m.update(b"password:");
            m.update(s.as_bytes());
            m.finalize().into_bytes()
        };
        if bool::from(digest(given).ct_eq(&digest(&self.admin_password))) {
            Ok(())
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    /// A token for the bootstrap admin, scoped to the admin project.
    pub fn issue_admin(&self, now: DateTime<Utc>) -> (String, Claims) {
        let admin = Subject {
            user_id: self.identity.admin_user_id.clone(),
            user_name: "admin".into(),
            project_id: self.identity.admin_project_id.clone(),
            project_name: "admin".into(),
            roles: ADMIN_ROLES.iter().map(|r| r.to_string()).collect(),
        };
        self.issue(admin, now)
    }

    /// A token for a user scoped to a project with its roles there.
    pub fn issue(&self, who: Subject, now: DateTime<Utc>) -> (String, Claims) {
        self.issue_ordered(who, now, now)
    }

    /// As [`Self::issue`], issued at `issued_at` (the store's token clock,
    /// which orders it among revocations) but expiring a TTL after the
    /// wall clock's `now`, so a token clock left ahead by a wall clock
    /// that once jumped forward never lengthens a token's life.
    pub fn issue_ordered(
        &self,
        who: Subject,
        issued_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (String, Claims) {
        let mut audit = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut audit);
        let claims = Claims {
            user_id: who.user_id,
            user_name: who.user_name,
            project_id: who.project_id,
            project_name: who.project_name,
            roles: who.roles,
            issued_at,
            expires_at: now + self.ttl,
            audit_id: B64.encode(audit),
            from_region: false,
        };
        (self.sign(&claims), claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut m = self.mac();
        m.update(PREFIX.as_bytes());
        m.update(body.as_bytes());
        let tag = B64.encode(m.finalize().into_bytes());
        format!("{PREFIX}.{body}.{tag}")
    }

    /// Verifies a token's signature and expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::BadToken);
        };
        let tag = B64.decode(tag).map_err(|_| AuthError::BadToken)?;
        let mut m = self.mac();
        m.update(PREFIX.as_bytes());
        m.update(body.as_bytes());
        m.verify_slice(&tag).map_err(|_| AuthError::BadToken)?;
        let claims: Claims =
            serde_json::from_slice(&B64.decode(body).map_err(|_| AuthError::BadToken)?)
                .map_err(|_| AuthError::BadToken)?;
        if claims.expires_at <= now {
            return Err(AuthError::Expired(roost_common::model::openstack_time(
                &claims.expires_at,
            )));
        }
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&claims.audit_id)
        {
            return Err(AuthError::Revoked);
        }
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        let ended = |subject: String| events.get(&subject).is_some_and(|t| claims.issued_at <= *t);
        if ended(format!("user:{}", claims.user_id))
            || ended(format!("project:{}", claims.project_id))
        {
            return Err(AuthError::Revoked);
        }
        drop(events);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(key: &[u8]) -> Authority {
        let identity = Identity {
            site_id: "s".into(),
            admin_user_id: "u".into(),
            admin_project_id: "p".into(),
            token_key: key.to_vec(),
            intent_actor: b"a".to_vec(),
        };
        Authority::new(identity, "correct horse".into(), 3600)
    }

    #[test]
    fn password_check() {
        let a = authority(b"k");
        assert!(a.check_password("correct horse").is_ok());
        assert_eq!(
            a.check_password("correct hors"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(a.check_password(""), Err(AuthError::BadCredentials));
    }

    #[test]
    fn token_round_trip_and_expiry() {
        let a = authority(b"k");
        let now = Utc::now();
        let (t, claims) = a.issue_admin(now);
        assert_eq!(a.verify(&t, now).unwrap(), claims);
        assert_eq!(claims.roles, ["admin", "member", "reader"]);
        assert!(matches!(
            a.verify(&t, now + Duration::seconds(3601)),
            Err(AuthError::Expired(_))
        ));
    }

    /// A token clock ahead of the wall clock orders the token, but its
    /// life is still a TTL from the wall clock.
    #[test]
    fn an_ordered_token_expires_a_ttl_after_the_wall_clock() {
        let a = authority(b"k");
        let now = Utc::now();
        let ahead = now + Duration::days(3);
        let alice = Subject {
            user_id: "alice".into(),
            user_name: "alice".into(),
            project_id: "dev".into(),
            project_name: "dev".into(),
            roles: vec!["member".into()],
        };
        let (t, claims) = a.issue_ordered(alice, ahead, now);
        assert_eq!(claims.issued_at, ahead);
        assert_eq!(claims.expires_at, now + Duration::seconds(3600));
        assert!(matches!(
            a.verify(&t, now + Duration::seconds(3601)),
            Err(AuthError::Expired(_))
        ));
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let a = authority(b"k");
        let now = Utc::now();
        let (t, _) = a.issue_admin(now);
        assert_eq!(
            authority(b"other").verify(&t, now),
            Err(AuthError::BadToken)
        );
        // Swap in claims with a later expiry but keep the old tag.
        let parts: Vec<&str> = t.split('.').collect();
        let mut forged: Claims = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        forged.expires_at = now + Duration::days(365);
        let forged = format!(
            "rst1.{}.{}",
            B64.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(a.verify(&forged, now), Err(AuthError::BadToken));
        for junk in ["", "rst1", "rst1..", "rst1.a.b.c", "gAAAAB-fernet-token"] {
            assert_eq!(a.verify(junk, now), Err(AuthError::BadToken), "{junk}");
        }
    }

    #[test]
    fn a_revoked_token_is_refused_and_others_are_not() {
        let a = authority(b"k");
        let now = Utc::now();
        let (t1, c1) = a.issue_admin(now);
        let (t2, _) = a.issue_admin(now);
        a.revoked([c1.audit_id]);
        assert_eq!(a.verify(&t1, now), Err(AuthError::Revoked));
        assert!(a.verify(&t2, now).is_ok());
    }

    #[test]
    fn a_revocation_event_ends_older_tokens_of_its_subject_only() {
        let a = authority(b"k");
        let now = Utc::now();
        let user = |name: &str, project: &str| Subject {
            user_id: name.into(),
            user_name: name.into(),
            project_id: project.into(),
            project_name: project.into(),
            roles: vec!["member".into()],
        };
        let (alice, _) = a.issue(user("alice", "dev"), now);
        let (bob, _) = a.issue(user("bob", "dev"), now);
        let (carol, _) = a.issue(user("carol", "ops"), now);
        a.revoke_subject("user:alice".into(), now);
        assert_eq!(a.verify(&alice, now), Err(AuthError::Revoked));
        assert!(a.verify(&bob, now).is_ok());
        // A token issued after the event works.
        let later = now + Duration::seconds(1);
        let (alice2, _) = a.issue(user("alice", "dev"), later);
        assert!(a.verify(&alice2, later).is_ok());
        // An older event never shortens a newer one.
        a.revoke_subject("user:alice".into(), now - Duration::seconds(5));
        assert_eq!(a.verify(&alice, later), Err(AuthError::Revoked));
        a.revoke_subject("project:ops".into(), now);
        assert_eq!(a.verify(&carol, later), Err(AuthError::Revoked));
        assert!(a.verify(&bob, later).is_ok());
    }

    #[test]
    fn user_passwords_are_salted_hashes_checked_in_full() {
        let h1 = hash_password("correct horse").unwrap();
        let h2 = hash_password("correct horse").unwrap();
        assert!(h1.starts_with("$argon2id$"), "{h1}");
        assert_ne!(h1, h2, "each hash has its own salt");
        assert!(check_user_password(Some(&h1), "correct horse").is_ok());
        assert_eq!(
            check_user_password(Some(&h1), "correct hors"),
            Err(AuthError::BadCredentials)
        );
        // No user: refused, even with the decoy's own password.
        assert_eq!(
            check_user_password(None, "decoy password"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            check_user_password(Some("not a hash"), "x"),
            Err(AuthError::BadCredentials)
        );
    }
}
