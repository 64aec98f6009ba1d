//! A client for the OCI distribution API (what Docker registries speak): manifests and
//! blobs, with the `WWW-Authenticate` Basic and Bearer token flows and every byte checked
//! against its digest.
//!
//! HTTPS always, verified against both the built-in web roots and the host's trust store
//! (`/etc/ssl/certs`, so registries with certificates from a private CA work). Loopback
//! registries (`localhost`, `127.0.0.0/8`, `::1`) and those listed as insecure are treated
//! as Docker treats insecure registries: HTTPS first, and when the connection or the TLS
//! handshake fails (not on an HTTP error status), plain HTTP; the choice is remembered per
//! registry for the client's life. Credentials come from a Docker-style `config.json`
//! (`auths.<host>.auth` = base64 `user:password`, or `username`/`password`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

mod auth;
mod fetch;
#[cfg(test)]
mod tests;

use auth::default_auth_file;
pub use auth::{load_credentials, parse_challenge};

use super::reference::{Reference, validate_digest};
use super::{
    Descriptor, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, OciError, hex,
    io_err, sha256_digest,
};

/// Largest manifest, index or config accepted (they are small JSON documents).
pub const MAX_DOCUMENT: u64 = 8 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host` or `host:port`) that may be spoken to over plain HTTP when HTTPS
    /// cannot connect, besides loopback ones.
    pub insecure: Vec<String>,
    /// A Docker-style `config.json` with credentials; default `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` when present.
    pub auth_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

/// How a registry is reached, once a first request got an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    Https,
    /// Plain HTTP, chosen because HTTPS failed to connect with this error.
    Http {
        https_error: String,
    },
}

/// A distribution API client. Cheap to share; tokens are cached per registry and scope,
/// the transport (HTTPS or plain HTTP) per registry.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    insecure: Vec<String>,
    creds: HashMap<String, (String, String)>,
    auth: Mutex<HashMap<String, Auth>>,
    transports: Mutex<HashMap<String, Transport>>,
}

impl RegistryClient {
    /// A client with these options (reads the credentials file and the host's trusted
    /// certificates now).
    pub fn new(opts: &RegistryOptions) -> Result<Self, OciError> {
        Self::with_http(opts, reqwest::Client::builder)
    }

    /// A client whose HTTP client starts from `builder()` (tests add roots and name
    /// overrides there).
    fn with_http(
        opts: &RegistryOptions,
        builder: impl Fn() -> reqwest::ClientBuilder,
    ) -> Result<Self, OciError> {
        let base = || {
            builder()
                .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(std::time::Duration::from_secs(30))
                // A registry that goes silent mid-answer fails the pull instead of hanging it.
                .read_timeout(std::time::Duration::from_secs(60))
                .tls_built_in_webpki_certs(true)
        };
        // reqwest refuses to build when the host's store holds certificates but none
        // parses; registries with public certificates should still work then.
        let http = match base().tls_built_in_native_certs(true).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    error = %chain(&e),
                    "the host's trusted certificates are unusable; trusting the built-in roots only"
                );
                base()
                    .tls_built_in_native_certs(false)
                    .build()
                    .map_err(|e| OciError::Registry(format!("http client: {}", chain(&e))))?
            }
        };
        let file = opts.auth_file.clone().or_else(default_auth_file);
        let creds = match file {
            Some(f) if f.exists() => load_credentials(&f)?,
            _ => HashMap::new(),
        };
        Ok(Self {
            http,
            insecure: opts.insecure.clone(),
            creds,
            auth: Mutex::new(HashMap::new()),
            transports: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `registry` (`host` or `host:port`) may be spoken to over plain HTTP when
    /// HTTPS cannot connect: loopback and insecure registries.
    pub fn allows_plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .insecure
                .iter()
                .any(|i| i == registry || host_of(registry) == i.as_str())
    }

    /// The scheme (`"https"` or `"http"`) remembered for `registry`, if a request to it
    /// got an answer yet.
    pub fn scheme(&self, registry: &str) -> Option<&'static str> {
        self.transport(registry).map(|t| match t {
            Transport::Https => "https",
            Transport::Http { .. } => "http",
        })
    }

    fn transport(&self, registry: &str) -> Option<Transport> {
        self.transports
            .lock()
            .ok()
            .and_then(|m| m.get(registry).cloned())
    }

    fn remember(&self, registry: &str, t: Transport) {
        if let Ok(mut m) = self.transports.lock() {
            m.entry(registry.to_owned()).or_insert(t);
        }
    }

    fn url(r: &Reference, scheme: &str, tail: &str) -> String {
        format!("{scheme}://{}/v2/{}/{tail}", r.api_host(), r.repository)
    }

    /// Sends one GET of `/v2/<repository>/<tail>`, choosing the transport: the remembered
    /// one, else HTTPS, else (for registries allowing it, on a connection or handshake
    /// failure) plain HTTP. Returns the response and the URL used.
    async fn send(
        &self,
        r: &Reference,
        tail: &str,
        accept: &str,
        auth: Option<&Auth>,
    ) -> Result<(reqwest::Response, String), OciError> {
        let request = |scheme: &str| {
            let url = Self::url(r, scheme, tail);
            let mut req = self.http.get(&url).header(reqwest::header::ACCEPT, accept);
            match auth {
                Some(Auth::Bearer(t)) => req = req.bearer_auth(t),
                Some(Auth::Basic) => {
                    if let Some((u, p)) = self.creds.get(&r.registry) {
                        req = req.basic_auth(u, Some(p));
                    }
                }
                None => {}
            }
            (url, req)
        };
        let known = self.transport(&r.registry);
        if let Some(Transport::Http { .. }) = known {
            let (url, req) = request("http");
            let resp = req.send().await.map_err(|e| {
                OciError::Registry(format!("GET {url}: {}", chain(&e.without_url())))
            })?;
            return Ok((resp, url));
        }
        let (url, req) = request("https");
        match req.send().await {
            Ok(resp) => {
                if known.is_none() {
                    self.remember(&r.registry, Transport::Https);
                }
                Ok((resp, url))
            }
            Err(e) if known.is_none() && self.allows_plain_http(&r.registry) && falls_back(&e) => {
                let https_error = chain(&e.without_url());
                let (http_url, req) = request("http");
                let resp = req.send().await.map_err(|e2| {
                    OciError::Registry(format!(
                        "GET {url}: {https_error}; GET {http_url}: {}",
                        chain(&e2.without_url())
                    ))
                })?;
                tracing::info!(
                    registry = %r.registry,
                    https_error = %https_error,
                    "HTTPS failed; using plain HTTP for this registry"
                );
                self.remember(&r.registry, Transport::Http { https_error });
                Ok((resp, http_url))
            }
            Err(e) => Err(OciError::Registry(format!(
                "GET {url}: {}",
                chain(&e.without_url())
            ))),
        }
    }

    async fn get(
        &self,
        r: &Reference,
        tail: &str,
        accept: &str,
    ) -> Result<(reqwest::Response, String), OciError> {
        let key = format!("{}|repository:{}:pull", r.registry, r.repository);
        let mut fresh = false;
        loop {
            let cached = self.auth.lock().ok().and_then(|m| m.get(&key).cloned());
            let (resp, url) = self.send(r, tail, accept, cached.as_ref()).await?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !fresh {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let auth = self.authenticate(r, &challenge).await?;
                if let Ok(mut m) = self.auth.lock() {
                    m.insert(key.clone(), auth);
                }
                fresh = true;
                continue;
            }
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                let mut msg = format!("GET {url}: {status}: {}", body.trim());
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    msg = match self.creds.get(&r.registry) {
                        Some((user, _)) => format!(
                            "{}: unauthorized: the credentials of {user} were refused ({msg})",
                            r.registry
                        ),
                        None => format!(
                            "{}: unauthorized: no credentials configured for it ({msg})",
                            r.registry
                        ),
                    };
                }
                if let Some(Transport::Http { https_error }) = self.transport(&r.registry) {
                    msg.push_str(&format!(
                        " (over plain HTTP because HTTPS failed: {https_error})"
                    ));
                }
                return Err(OciError::Registry(msg));
            }
            return Ok((resp, url));
        }
    }
}

/// Whether a failed HTTPS request may be retried over plain HTTP: only when no HTTP
/// exchange took place (refused or reset connection, failed TLS handshake, connect
/// timeout), never after the server answered.
fn falls_back(e: &reqwest::Error) -> bool {
    e.is_connect()
}

/// An error with its causes (reqwest's own message hides DNS, TLS and connect failures).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry)
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let h = host_of(registry);
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}
