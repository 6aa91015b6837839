//! Tokens that prove who connects: HS256 JWTs whose `sub` is the user name.
//!
//! Verification is deliberately narrow: HS256 only, `exp` and `sub` required,
//! `nbf` honoured, and no token valid for longer than the server's maximum
//! lifetime (a leaked long-lived token would be a permanent key). Every
//! failure is "unauthorized" on the wire; the [`AuthError`] variant is for
//! the server's log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the minting host and this one, in seconds.
const LEEWAY_SECS: u64 = 30;

/// The shortest secret accepted: HS256 needs a key of at least the hash's
/// size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// The longest lifetime a token may have unless the operator says otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a token was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("no token given")]
    Missing,
    /// Not a JWT, or one without the claims chatd needs.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with an algorithm other than HS256 (including `none`).
    #[error("token algorithm {0:?} is not accepted, only HS256")]
    Algorithm(String),
    /// The signature does not match this server's secret.
    #[error("bad token signature (signed with another secret?)")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` has not come yet.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// Valid for longer than the server allows (from `iat`, or from now).
    #[error("token valid for longer than the maximum of {max_secs}s (--max-token-ttl)")]
    TooLongLived {
        /// The maximum lifetime, in seconds.
        max_secs: u64,
    },
    /// A valid token, but for someone else.
    #[error("token is for user {token_user:?}, not {user:?}")]
    WrongUser {
        /// The `sub` of the token.
        token_user: String,
        /// The user the connection claims to be.
        user: String,
    },
    /// Signing failed (only when issuing).
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// The claims chatd writes.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// The claims chatd reads itself; the library checks `exp` and `nbf`.
/// Other claims are ignored and `iat` is optional, so tokens minted by any
/// backend work.
#[derive(Debug, Deserialize)]
struct Lifetime {
    sub: String,
    exp: u64,
    iat: Option<u64>,
}

/// The HMAC key tokens are signed and verified with.
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    max_ttl_secs: u64,
}

impl TokenKey {
    /// A key from the secret's bytes (the trimmed secret file content; the
    /// caller checks its length against [`MIN_SECRET_BYTES`]), accepting
    /// tokens valid for at most `max_ttl`.
    pub fn new(secret: &[u8], max_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            max_ttl_secs: max_ttl.as_secs(),
        }
    }

    /// Issues a token for `user`, valid for `ttl` from now (at most the
    /// maximum lifetime).
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, AuthError> {
        if ttl.as_secs() > self.max_ttl_secs {
            return Err(AuthError::TooLongLived {
                max_secs: self.max_ttl_secs,
            });
        }
        let iat = unix_now();
        self.issue_at(user, iat, iat.saturating_add(ttl.as_secs()))
    }

    /// Issues a token with explicit `iat` and `exp` (seconds since the epoch).
    fn issue_at(&self, user: &str, iat: u64, exp: u64) -> Result<String, AuthError> {
        let claims = Claims {
            sub: user.to_owned(),
            iat,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }

    /// Checks that `token` is a current HS256 token for `user` signed with
    /// this key.
    pub fn verify(&self, token: &str, user: &str) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Name the algorithm in the log when it is the problem; the library
        // would only say "invalid" (or fail to parse `none` at all).
        let alg = header_alg(token)?;
        if alg != "HS256" {
            return Err(AuthError::Algorithm(alg));
        }
        let data = jsonwebtoken::decode::<Lifetime>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm(alg.clone()),
                _ => AuthError::Malformed(e.to_string()),
            })?;
        // Valid for too long from now, or from when it was issued (a token
        // minted for a century does not become acceptable by aging).
        let longest = self.max_ttl_secs.saturating_add(LEEWAY_SECS);
        let now = unix_now();
        let from_now = data.claims.exp.saturating_sub(now);
        let from_issue = data
            .claims
            .iat
            .map_or(0, |iat| data.claims.exp.saturating_sub(iat));
        if from_now > longest || from_issue > longest {
            return Err(AuthError::TooLongLived {
                max_secs: self.max_ttl_secs,
            });
        }
        if data.claims.sub != user {
            return Err(AuthError::WrongUser {
                token_user: data.claims.sub,
                user: user.to_owned(),
            });
        }
        Ok(())
    }
}

/// The `alg` of a compact JWT's header, read without trusting anything else.
fn header_alg(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let malformed = |why: &str| AuthError::Malformed(why.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: AlgOnly =
        serde_json::from_slice(&json).map_err(|_| malformed("header has no alg"))?;
    Ok(header.alg)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> TokenKey {
        TokenKey::new(SECRET, DEFAULT_MAX_TTL)
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn round_trip() {
        let token = key().issue("Dummy-1", DAY).unwrap();
        assert_eq!(key().verify(&token, "Dummy-1"), Ok(()));
    }

    #[test]
    fn claims_are_sub_iat_exp() {
        let token = key().issue("Dummy-1", DAY).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["sub"], "Dummy-1");
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + DAY.as_secs());
    }

    #[test]
    fn expired_beyond_leeway() {
        let now = unix_now();
        let old = key().issue_at("Dummy-1", now - 7200, now - 120).unwrap();
        assert_eq!(key().verify(&old, "Dummy-1"), Err(AuthError::Expired));
        // Within the leeway it still passes: clocks drift.
        let recent = key().issue_at("Dummy-1", now - 7200, now - 5).unwrap();
        assert_eq!(key().verify(&recent, "Dummy-1"), Ok(()));
    }

    #[test]
    fn wrong_user() {
        let token = key().issue("Dummy-1", DAY).unwrap();
        assert_eq!(
            key().verify(&token, "Dummy-2"),
            Err(AuthError::WrongUser {
                token_user: "Dummy-1".into(),
                user: "Dummy-2".into()
            })
        );
    }

    #[test]
    fn another_secret() {
        let other = TokenKey::new(b"another secret of thirty-two byte", DEFAULT_MAX_TTL);
        let token = other.issue("Dummy-1", DAY).unwrap();
        assert_eq!(
            key().verify(&token, "Dummy-1"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_refused() {
        let exp = unix_now() + 3600;
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"Dummy-1","exp":{exp}}}"#))
        );
        assert_eq!(
            key().verify(&token, "Dummy-1"),
            Err(AuthError::Algorithm("none".into()))
        );
    }

    #[test]
    fn other_hmac_algorithms_refused() {
        let claims = Claims {
            sub: "Dummy-1".into(),
            iat: unix_now(),
            exp: unix_now() + 3600,
        };
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert!(
                matches!(
                    key().verify(&token, "Dummy-1"),
                    Err(AuthError::Algorithm(_))
                ),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn missing_exp_refused() {
        let token = signed(serde_json::json!({"sub": "Dummy-1"}));
        assert!(matches!(
            key().verify(&token, "Dummy-1"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn foreign_token_without_iat_accepted() {
        let exp = unix_now() + 3600;
        let token = signed(serde_json::json!({"sub": "Dummy-1", "exp": exp, "name": "x"}));
        assert_eq!(key().verify(&token, "Dummy-1"), Ok(()));
    }

    #[test]
    fn nbf_in_the_future_refused() {
        let now = unix_now();
        let early =
            signed(serde_json::json!({"sub": "Dummy-1", "exp": now + 3600, "nbf": now + 600}));
        assert_eq!(key().verify(&early, "Dummy-1"), Err(AuthError::NotYetValid));
        let due = signed(serde_json::json!({"sub": "Dummy-1", "exp": now + 3600, "nbf": now - 1}));
        assert_eq!(key().verify(&due, "Dummy-1"), Ok(()));
    }

    #[test]
    fn lifetimes_past_the_maximum_refused() {
        let now = unix_now();
        let max = DEFAULT_MAX_TTL.as_secs();
        let too_long = AuthError::TooLongLived { max_secs: max };
        let century =
            signed(serde_json::json!({"sub": "Dummy-1", "exp": now + 100 * 365 * DAY.as_secs()}));
        assert_eq!(key().verify(&century, "Dummy-1"), Err(too_long.clone()));
        // Issued long ago: its lifetime counts from `iat`, not from now.
        let aged = signed(
            serde_json::json!({"sub": "Dummy-1", "iat": now - max, "exp": now + 2 * DAY.as_secs()}),
        );
        assert_eq!(key().verify(&aged, "Dummy-1"), Err(too_long.clone()));
        // A future `iat` does not shorten it either.
        let sly = signed(
            serde_json::json!({"sub": "Dummy-1", "iat": now + 2 * max, "exp": now + 2 * max + 60}),
        );
        assert_eq!(key().verify(&sly, "Dummy-1"), Err(too_long.clone()));
        let longest = signed(serde_json::json!({"sub": "Dummy-1", "iat": now, "exp": now + max}));
        assert_eq!(key().verify(&longest, "Dummy-1"), Ok(()));
        assert_eq!(key().issue("Dummy-1", DEFAULT_MAX_TTL + DAY), Err(too_long));
        let strict = TokenKey::new(SECRET, DAY);
        let week = key().issue("Dummy-1", 7 * DAY).unwrap();
        assert!(matches!(
            strict.verify(&week, "Dummy-1"),
            Err(AuthError::TooLongLived { .. })
        ));
    }

    #[test]
    fn garbage_refused() {
        assert_eq!(key().verify("", "Dummy-1"), Err(AuthError::Missing));
        for junk in ["x", "a.b", "a.b.c", "a.b.c.d", "!!.??.##", "e30.e30.e30"] {
            assert!(
                matches!(key().verify(junk, "Dummy-1"), Err(AuthError::Malformed(_))),
                "{junk:?}"
            );
        }
    }
}
