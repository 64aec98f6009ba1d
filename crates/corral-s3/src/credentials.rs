//! Push credentials: short-lived, stateless, derived from a key each [`CredentialIssuer`] holds.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::{CREDENTIAL_LIFETIME_SECS, S3Error};

pub(crate) type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Short-lived, stateless push credentials. The session token is `<expiry unix secs>.<random>`;
/// the access key id and the secret are HMAC-SHA256s of the token under a key that is random
/// per issuer (one per server, held by its [`ObjectStorage`](crate::ObjectStorage)), so
/// nothing needs storing: a request proves it knows the secret of its token by
/// its signature, and a token with a changed expiry no longer matches its access key.
///
/// Credentials last [`CREDENTIAL_LIFETIME_SECS`]. Because the key lives only in memory,
/// credentials handed out before a server restart are refused afterwards (403
/// `InvalidAccessKeyId`); the SDK asks for new ones with each image build, so only an upload
/// running across a restart fails.
pub struct CredentialIssuer {
    key: [u8; 32],
}

impl std::fmt::Debug for CredentialIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialIssuer").finish_non_exhaustive()
    }
}

/// What `GET /api/object-storage/push-access` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Unix seconds after which the credentials are refused.
    pub expires_at: i64,
}

impl CredentialIssuer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// An issuer with a fresh random key (from the OS's generator, via two v4 UUIDs: 244
    /// random bits).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self { key }
    }

    /// New credentials valid for [`CREDENTIAL_LIFETIME_SECS`] from `now`.
    pub fn issue(&self, now: OffsetDateTime) -> PushCredentials {
        let expires_at = now
            .unix_timestamp()
            .saturating_add(CREDENTIAL_LIFETIME_SECS);
        let session_token = format!("{expires_at}.{}", uuid::Uuid::new_v4().simple());
        PushCredentials {
            access_key_id: self.access_key_for(&session_token),
            secret_access_key: self.secret_of(&session_token),
            session_token,
            expires_at,
        }
    }

    fn access_key_for(&self, token: &str) -> String {
        let mac = hmac_sha256(&self.key, format!("access-key:{token}").as_bytes());
        format!("CORRAL{}", hex::encode_upper(&mac[..7]))
    }

    fn secret_of(&self, token: &str) -> String {
        hex::encode(hmac_sha256(&self.key, token.as_bytes()))
    }

    /// The secret belonging to `access_key` and `token`, when the token is well-formed and
    /// unexpired and the access key is the one issued with it.
    pub fn secret_for(
        &self,
        access_key: &str,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<String, S3Error> {
        let invalid = || {
            S3Error::forbidden(
                "InvalidToken",
                "the security token was not issued by this server; ask GET \
                 /api/object-storage/push-access for credentials",
            )
        };
        let (expiry, random) = token.split_once('.').ok_or_else(invalid)?;
        let well_formed = !expiry.is_empty()
            && expiry.len() <= 12
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 32
            && random
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(invalid());
        }
        let expiry: i64 = expiry.parse().map_err(|_| invalid())?;
        // Later than any token issued so far could expire (a minute's leeway for clock steps).
        if expiry
            > now
                .unix_timestamp()
                .saturating_add(CREDENTIAL_LIFETIME_SECS + 60)
        {
            return Err(invalid());
        }
        if access_key != self.access_key_for(token) {
            return Err(S3Error::forbidden(
                "InvalidAccessKeyId",
                "the access key does not belong to this security token (credentials do not \
                 survive a server restart); ask GET /api/object-storage/push-access for new ones",
            ));
        }
        if expiry <= now.unix_timestamp() {
            return Err(S3Error::forbidden(
                "ExpiredToken",
                "the credentials have expired; ask GET /api/object-storage/push-access for new \
                 ones",
            ));
        }
        Ok(self.secret_of(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use axum::http::StatusCode;

    #[test]
    fn credentials_are_derived_from_the_token() {
        let issuer = CredentialIssuer::new(TEST_KEY);
        // Values computed independently (Python's hmac) from the documented derivation.
        assert_eq!(issuer.access_key_for(TEST_TOKEN), "CORRAL15662F4B168EFD");
        assert_eq!(
            issuer
                .secret_for("CORRAL15662F4B168EFD", TEST_TOKEN, at(1_700_000_000))
                .expect("valid"),
            "047790cfd1bb55bbff4fd456795c50ca00c6eea7b8180d0a16a6e402c5cfbe94"
        );
    }

    #[test]
    fn issued_credentials_work_until_they_expire() {
        let issuer = CredentialIssuer::random();
        let now = at(1_700_000_000);
        let c = issuer.issue(now);
        assert_eq!(c.expires_at, 1_700_003_600);
        assert!(c.session_token.starts_with("1700003600."));
        assert_eq!(
            issuer
                .secret_for(&c.access_key_id, &c.session_token, now)
                .expect("valid"),
            c.secret_access_key
        );
        let e = issuer
            .secret_for(&c.access_key_id, &c.session_token, at(1_700_003_600))
            .expect_err("expired");
        assert_eq!(e.code, "ExpiredToken");
        // A later expiry written into the token does not match the access key any more.
        let (_, random) = c.session_token.split_once('.').expect("token");
        let forged = format!("1700003000.{random}");
        let e = issuer
            .secret_for(&c.access_key_id, &forged, now)
            .expect_err("forged");
        assert_eq!(e.code, "InvalidAccessKeyId");
        // Another issuer (a restart, or another server) does not know them.
        let e = CredentialIssuer::random()
            .secret_for(&c.access_key_id, &c.session_token, now)
            .expect_err("restart");
        assert_eq!(e.code, "InvalidAccessKeyId");
        for bad in [
            "",
            "x",
            "1.2",
            "abc.0123456789abcdef0123456789abcdef",
            "99999999999.0123456789abcdef0123456789abcdef",
        ] {
            let e = issuer
                .secret_for(&c.access_key_id, bad, now)
                .expect_err(bad);
            assert_eq!(e.code, "InvalidToken");
            assert_eq!(e.status, StatusCode::FORBIDDEN);
        }
    }
}
