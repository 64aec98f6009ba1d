//! Extractors whose rejections are Daytona-shaped 400s instead of axum's plain-text errors.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body; malformed JSON, wrong types and missing fields are 400s.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        if bytes.is_empty() {
            return serde_json::from_slice(b"{}")
                .map(JsonBody)
                .map_err(|e| ApiError::bad_request(format!("a JSON body is required: {e}")));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

/// The raw query as ordered pairs, so repeated keys (`states=a&states=b`) are kept.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(QueryPairs)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }
}

impl QueryPairs {
    /// The last value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a key (also accepts `key[]`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        let alt = format!("{key}[]");
        self.0
            .iter()
            .filter(|(k, _)| k == key || *k == alt)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
