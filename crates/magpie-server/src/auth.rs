//! Tokens: issuing, verifying and revoking.
//!
//! Tokens are standard JWTs (HS256, signed with the app secret), so an app backend can inspect
//! them with any JWT library. Claims: `sub` (user id), `iat` and `exp` (seconds), and `gen`,
//! the user's token generation at issue time. Revoking bumps the stored generation, which
//! invalidates every token issued before — no token list to store or replicate. Deleting a
//! user bumps it too, so a user later created again under the same id cannot be reached with
//! the old user's tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use magpie_proto::{ErrorCode, Millis, UserId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The JOSE header of every token: `{"alg":"HS256","typ":"JWT"}`.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// What a token says.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: i64,
    /// Expires at (seconds since the Unix epoch).
    pub exp: i64,
    /// The user's token generation when issued.
    #[serde(rename = "gen")]
    pub generation: u64,
}

impl Claims {
    /// Expiry in milliseconds.
    pub fn expires_at_ms(&self) -> Millis {
        self.exp.saturating_mul(1000)
    }
}

/// Signs and checks tokens with the app secret.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorCode::TokenInvalid, message)
}

impl TokenSigner {
    /// A signer keyed with the app secret.
    pub fn new(secret: &str) -> Self {
        Self {
            // HMAC accepts keys of any length; this cannot fail.
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
                .unwrap_or_else(|_| unreachable!("hmac takes any key length")),
        }
    }

    /// A token for `user` at token generation `generation`, valid from `now_secs` for
    /// `ttl_secs`.
    pub fn issue(&self, user: &UserId, generation: u64, now_secs: i64, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: user.as_str().to_owned(),
            iat: now_secs,
            exp: now_secs.saturating_add(ttl_secs.min(i64::MAX as u64) as i64),
            generation,
        };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signing_input = format!("{HEADER}.{payload}");
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks the signature and expiry of a token; does not check the generation.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("token is not a JWT"));
        };
        if header != HEADER {
            return Err(invalid("token header must be HS256 JWT"));
        }
        let signature = B64
            .decode(signature)
            .map_err(|_| invalid("token signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| invalid("token signature does not match"))?;
        let payload = B64
            .decode(payload)
            .map_err(|_| invalid("token payload is not base64url"))?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| invalid("token claims are malformed"))?;
        if claims.exp <= now_secs {
            return Err(Error::new(ErrorCode::TokenExpired, "token has expired"));
        }
        Ok(claims)
    }
}

/// Checks that verified claims belong to `user` and have not been revoked.
pub fn check_claims(claims: &Claims, user: &UserId, current_generation: u64) -> Result<()> {
    if claims.sub != user.as_str() {
        return Err(invalid("token was issued for another user"));
    }
    if claims.generation != current_generation {
        return Err(Error::new(ErrorCode::TokenRevoked, "token was revoked"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000;

    fn alice() -> UserId {
        UserId::new("alice").expect("id")
    }

    #[test]
    fn header_constant_is_the_hs256_header() {
        let decoded = B64.decode(HEADER).expect("base64");
        assert_eq!(decoded, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let signer = TokenSigner::new("0123456789abcdef-secret");
        let token = signer.issue(&alice(), 3, NOW, 60);
        let claims = signer.verify(&token, NOW + 59).expect("valid");
        assert_eq!(
            (claims.sub.as_str(), claims.generation, claims.exp),
            ("alice", 3, NOW + 60)
        );
        check_claims(&claims, &alice(), 3).expect("current generation");
        let err = signer.verify(&token, NOW + 60).expect_err("expired");
        assert_eq!(err.code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let signer = TokenSigner::new("0123456789abcdef-secret");
        let other = TokenSigner::new("another-secret-0123456789");
        let token = other.issue(&alice(), 0, NOW, 60);
        assert_eq!(
            signer.verify(&token, NOW).expect_err("wrong key").code(),
            ErrorCode::TokenInvalid
        );

        let good = signer.issue(&alice(), 0, NOW, 60);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = B64.encode(br#"{"sub":"bob","iat":0,"exp":99999999999,"gen":0}"#);
        parts[1] = &forged_claims;
        let forged = parts.join(".");
        assert_eq!(
            signer.verify(&forged, NOW).expect_err("tampered").code(),
            ErrorCode::TokenInvalid
        );
        for junk in ["", "a.b", "a.b.c.d", "x.y.z", &good.replace('.', "")] {
            assert_eq!(
                signer.verify(junk, NOW).expect_err(junk).code(),
                ErrorCode::TokenInvalid
            );
        }

        let claims = signer.verify(&good, NOW).expect("valid");
        let bob = UserId::new("bob").expect("id");
        assert_eq!(
            check_claims(&claims, &bob, 0)
                .expect_err("other user")
                .code(),
            ErrorCode::TokenInvalid
        );
        assert_eq!(
            check_claims(&claims, &alice(), 1)
                .expect_err("revoked")
                .code(),
            ErrorCode::TokenRevoked
        );
    }
}
