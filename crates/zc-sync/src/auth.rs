//! Token verification of the legacy path (`ZERO_AUTH_SECRET`, `ZERO_AUTH_JWK`,
//! `ZERO_AUTH_JWKS_URL`): the token must be a valid, unexpired JWT signed with the
//! configured key, and its `sub` must be the connection's `userID`. Its claims become
//! `authData` for permission rules. Without any of these settings tokens are opaque and are
//! passed to the app's endpoints, which validate them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value as Json;
use zc_protocol::messages::ErrorBody;

/// The JWT settings.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `ZERO_AUTH_SECRET`: an HMAC secret (HS256/384/512).
    pub secret: Option<String>,
    /// `ZERO_AUTH_JWK`: one public key as a JWK (JSON).
    pub jwk: Option<String>,
    /// `ZERO_AUTH_JWKS_URL`: where to fetch the key set (cached for five minutes).
    pub jwks_url: Option<String>,
}

impl AuthConfig {
    /// True when tokens are JWTs verified by the server.
    pub fn is_jwt(&self) -> bool {
        self.secret.is_some() || self.jwk.is_some() || self.jwks_url.is_some()
    }
}

/// Verifies tokens.
#[derive(Debug)]
pub struct Verifier {
    config: AuthConfig,
    http: reqwest::Client,
    jwks: Mutex<Option<(Instant, JwkSet)>>,
}

const JWKS_TTL: Duration = Duration::from_secs(300);

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::auth_invalidated(format!("Failed to decode auth token: {}", message.into()))
}

/// zero-cache's wording (from the `jose` library) for a verification failure.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => {
            "JWSSignatureVerificationFailed: signature verification failed".into()
        }
        K::ExpiredSignature => "JWTExpired: \"exp\" claim timestamp check failed".into(),
        K::ImmatureSignature => {
            "JWTClaimValidationFailed: \"nbf\" claim timestamp check failed".into()
        }
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => {
            "JWSInvalid: Invalid Compact JWS".into()
        }
        K::InvalidAlgorithm => {
            "JOSEAlgNotAllowed: \"alg\" (Algorithm) Header Parameter value not allowed".into()
        }
        other => format!("{other:?}"),
    }
}

impl Verifier {
    /// A verifier for these settings.
    pub fn new(config: AuthConfig) -> Verifier {
        Verifier {
            config,
            http: crate::forward::http_client(),
            jwks: Mutex::new(None),
        }
    }

    /// True when tokens are JWTs verified by the server.
    pub fn is_jwt(&self) -> bool {
        self.config.is_jwt()
    }

    async fn key_set(&self, refresh: bool) -> Result<JwkSet, ErrorBody> {
        if !refresh
            && let Ok(cache) = self.jwks.lock()
            && let Some((at, set)) = cache.as_ref()
            && at.elapsed() < JWKS_TTL
        {
            return Ok(set.clone());
        }
        let Some(url) = &self.config.jwks_url else {
            return Err(invalid("no JWKS URL is configured"));
        };
        let set: JwkSet = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| invalid(format!("could not fetch the JWKS: {e}")))?
            .text()
            .await
            .map_err(|e| invalid(format!("could not read the JWKS: {e}")))
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| invalid(format!("invalid JWKS: {e}")))
            })?;
        if let Ok(mut cache) = self.jwks.lock() {
            *cache = Some((Instant::now(), set.clone()));
        }
        Ok(set)
    }

    fn key_from_jwk(jwk: &Jwk) -> Result<DecodingKey, ErrorBody> {
        DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("unusable JWK: {e}")))
    }

    /// Verifies `token` for `user_id`; returns its claims.
    pub async fn verify(&self, token: &str, user_id: Option<&str>) -> Result<Json, ErrorBody> {
        let header = decode_header(token).map_err(|e| invalid(describe(&e)))?;
        let (key, algorithms): (DecodingKey, Vec<Algorithm>) =
            if let Some(secret) = &self.config.secret {
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                )
            } else if let Some(jwk) = &self.config.jwk {
                let jwk: Jwk = serde_json::from_str(jwk)
                    .map_err(|e| invalid(format!("ZERO_AUTH_JWK is not a JWK: {e}")))?;
                (Self::key_from_jwk(&jwk)?, vec![header.alg])
            } else {
                let kid = header.kid.clone().unwrap_or_default();
                let mut set = self.key_set(false).await?;
                if set.find(&kid).is_none() {
                    set = self.key_set(true).await?;
                }
                let jwk = set
                    .find(&kid)
                    .or_else(|| set.keys.first())
                    .ok_or_else(|| invalid("no key in the JWKS matches the token"))?;
                (Self::key_from_jwk(jwk)?, vec![header.alg])
            };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        let data = decode::<Json>(token, &key, &validation).map_err(|e| invalid(describe(&e)))?;
        let claims = data.claims;
        let sub = claims.get("sub").and_then(Json::as_str);
        match (user_id, sub) {
            (None, _) => Err(ErrorBody::unauthorized(
                "Authenticated connections require a userID.",
            )),
            (Some(u), s) if s != Some(u) => Err(invalid(
                "JWTClaimValidationFailed: unexpected \"sub\" claim value",
            )),
            _ => Ok(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use zc_protocol::messages::ErrorKind;

    use super::*;

    fn token(secret: &str, claims: Json) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn secrets_verify_signature_expiry_and_subject() {
        let v = Verifier::new(AuthConfig {
            secret: Some("s3cret".into()),
            ..AuthConfig::default()
        });
        let good = token(
            "s3cret",
            json!({"sub": "u1", "exp": now() + 600, "role": "admin"}),
        );
        let claims = v.verify(&good, Some("u1")).await.expect("valid");
        assert_eq!(claims["role"], "admin");
        let kind = |r: Result<Json, ErrorBody>| r.err().map(|e| e.kind());
        assert_eq!(
            kind(v.verify(&good, Some("u2")).await),
            Some(ErrorKind::AuthInvalidated)
        );
        let wrong_key = token("other", json!({"sub": "u1", "exp": now() + 600}));
        assert_eq!(
            kind(v.verify(&wrong_key, Some("u1")).await),
            Some(ErrorKind::AuthInvalidated)
        );
        let expired = token("s3cret", json!({"sub": "u1", "exp": now() - 600}));
        assert_eq!(
            kind(v.verify(&expired, Some("u1")).await),
            Some(ErrorKind::AuthInvalidated)
        );
        assert_eq!(
            kind(v.verify("not a jwt", Some("u1")).await),
            Some(ErrorKind::AuthInvalidated)
        );
    }

    fn oct_jwk(secret: &str) -> String {
        use base64::Engine as _;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        json!({"kty": "oct", "k": k, "alg": "HS256", "kid": "k1"}).to_string()
    }

    #[tokio::test]
    async fn a_jwk_and_a_fetched_jwks_verify_tokens() {
        let claims = json!({"sub": "u1", "exp": now() + 600});
        let v = Verifier::new(AuthConfig {
            jwk: Some(oct_jwk("jwk-secret")),
            ..AuthConfig::default()
        });
        assert!(
            v.verify(&token("jwk-secret", claims.clone()), Some("u1"))
                .await
                .is_ok()
        );
        assert!(
            v.verify(&token("other", claims.clone()), Some("u1"))
                .await
                .is_err()
        );

        // A JWKS served over HTTP, fetched once and cached.
        let set = format!("{{\"keys\":[{}]}}", oct_jwk("jwks-secret"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&served);
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = set.clone();
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let v = Verifier::new(AuthConfig {
            jwks_url: Some(format!("http://127.0.0.1:{port}/jwks")),
            ..AuthConfig::default()
        });
        let header = Header {
            kid: Some("k1".into()),
            ..Header::default()
        };
        let signed =
            encode(&header, &claims, &EncodingKey::from_secret(b"jwks-secret")).expect("token");
        assert!(v.verify(&signed, Some("u1")).await.is_ok());
        assert!(v.verify(&signed, Some("u1")).await.is_ok());
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the key set is cached"
        );
    }
}
