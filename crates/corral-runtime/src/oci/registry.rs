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

    async fn authenticate(&self, r: &Reference, challenge: &str) -> Result<Auth, OciError> {
        let (scheme, params) = parse_challenge(challenge);
        let creds = self.creds.get(&r.registry);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" if creds.is_some() => Ok(Auth::Basic),
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    OciError::Registry(format!("bearer challenge without realm: {challenge}"))
                })?;
                let realm_url = reqwest::Url::parse(realm)
                    .map_err(|e| OciError::Registry(format!("token realm {realm:?}: {e}")))?;
                if !self.realm_allowed(&r.registry, &realm_url) {
                    return Err(OciError::Registry(format!(
                        "refusing token realm {realm} (not https)"
                    )));
                }
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                let mut query = vec![("scope", scope)];
                if let Some(s) = params.get("service") {
                    query.push(("service", s.clone()));
                }
                if let Some((u, _)) = creds {
                    query.push(("account", u.clone()));
                }
                let mut req = self.http.get(realm_url).query(&query);
                if let Some((u, p)) = creds {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.map_err(|e| {
                    OciError::Registry(format!("token from {realm}: {}", chain(&e)))
                })?;
                if !resp.status().is_success() {
                    let why = match creds {
                        Some((u, _)) => format!("the credentials of {u} were refused"),
                        None => "no credentials configured for it".to_owned(),
                    };
                    return Err(OciError::Registry(format!(
                        "{}: unauthorized: {why} (token from {realm}: {})",
                        r.registry,
                        resp.status()
                    )));
                }
                let body: serde_json::Value = resp
                    .json_like()
                    .await
                    .map_err(|e| OciError::Registry(format!("token from {realm}: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| OciError::Registry(format!("no token from {realm}")))?;
                Ok(Auth::Bearer(token.to_owned()))
            }
            _ => Err(OciError::Registry(format!(
                "{}: unauthorized{}",
                r.registry,
                if creds.is_none() {
                    ": no credentials configured for it"
                } else {
                    ""
                }
            ))),
        }
    }

    /// Whether credentials may be sent to this token realm: HTTPS always; plain HTTP when
    /// the realm's host may be spoken to over plain HTTP, or when the registry itself is.
    fn realm_allowed(&self, registry: &str, realm: &reqwest::Url) -> bool {
        match realm.scheme() {
            "https" => true,
            "http" => {
                let host = realm.host_str().unwrap_or("");
                let authority = match realm.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                (!host.is_empty() && self.allows_plain_http(&authority))
                    || matches!(self.transport(registry), Some(Transport::Http { .. }))
            }
            _ => false,
        }
    }

    /// Fetches a manifest or index by tag or digest. Returns its bytes, media type and
    /// digest; a digest asked for or announced by the registry must match the bytes.
    pub async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, String, String), OciError> {
        let accept = [
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_MANIFEST,
            MT_DOCKER_LIST,
        ]
        .join(", ");
        let (resp, url) = self
            .get(r, &format!("manifests/{reference}"), &accept)
            .await?;
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = read_limited(resp, MAX_DOCUMENT, &url).await?;
        let digest = sha256_digest(&bytes);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            announced.filter(|a| a.starts_with("sha256:"))
        };
        if let Some(want) = expected
            && want != digest
        {
            return Err(OciError::Digest(format!(
                "manifest {reference} of {r}: expected {want}, got {digest}"
            )));
        }
        Ok((bytes, ctype, digest))
    }

    /// Fetches a small blob (a config) into memory, checked against its digest and size.
    pub async fn blob_bytes(&self, r: &Reference, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        validate_digest(&desc.digest)?;
        if desc.size > MAX_DOCUMENT {
            return Err(OciError::Invalid(format!(
                "config {} is {} bytes",
                desc.digest, desc.size
            )));
        }
        let (resp, url) = self
            .get(r, &format!("blobs/{}", desc.digest), "*/*")
            .await?;
        let bytes = read_limited(resp, MAX_DOCUMENT, &url).await?;
        let got = sha256_digest(&bytes);
        if got != desc.digest || bytes.len() as u64 != desc.size {
            return Err(OciError::Digest(format!(
                "blob {} of {r}: got {got} ({} bytes, expected {})",
                desc.digest,
                bytes.len(),
                desc.size
            )));
        }
        Ok(bytes)
    }

    /// Streams a blob into `dest`, checking size and digest; on any mismatch `dest` is
    /// removed and an error returned. `progress` gets the bytes received so far.
    pub async fn download_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), OciError> {
        validate_digest(&desc.digest)?;
        let result = async {
            let (mut resp, url) = self
                .get(r, &format!("blobs/{}", desc.digest), "*/*")
                .await?;
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(io_err("create", dest))?;
            let mut hasher = sha2::Sha256::new();
            let mut done = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| OciError::Registry(format!("GET {url}: {e}")))?
            {
                done += chunk.len() as u64;
                if done > desc.size {
                    return Err(OciError::Digest(format!(
                        "blob {} of {r} is larger than its {} bytes",
                        desc.digest, desc.size
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(io_err("write", dest))?;
                progress(done);
            }
            file.sync_all().await.map_err(io_err("fsync", dest))?;
            let got = format!("sha256:{}", hex(&hasher.finalize()));
            if got != desc.digest || done != desc.size {
                return Err(OciError::Digest(format!(
                    "blob {} of {r}: got {got} ({done} bytes, expected {})",
                    desc.digest, desc.size
                )));
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

/// Whether a failed HTTPS request may be retried over plain HTTP: only when no HTTP
/// exchange took place (refused or reset connection, failed TLS handshake, connect
/// timeout), never after the server answered.
fn falls_back(e: &reqwest::Error) -> bool {
    e.is_connect()
}

trait JsonLike {
    async fn json_like(self) -> Result<serde_json::Value, String>;
}

impl JsonLike for reqwest::Response {
    async fn json_like(self) -> Result<serde_json::Value, String> {
        let b = read_limited(self, 1 << 20, "token")
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }
}

async fn read_limited(
    mut resp: reqwest::Response,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| OciError::Registry(format!("{what}: {e}")))?
    {
        if (out.len() + c.len()) as u64 > max {
            return Err(OciError::Invalid(format!(
                "{what}: larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
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

/// Parses `Bearer realm="…",service="…",scope="…"` into the scheme and its parameters.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

fn default_auth_file() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Reads `auths` of a Docker-style `config.json` into registry → (user, password).
pub fn load_credentials(path: &Path) -> Result<HashMap<String, (String, String)>, OciError> {
    let text = std::fs::read(path).map_err(io_err("read", path))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| OciError::Invalid(format!("{}: {e}", path.display())))?;
    let mut out = HashMap::new();
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(out);
    };
    for (key, entry) in auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            h => h,
        };
        let pair = if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
            base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        } else {
            match (
                entry.get("username").and_then(|u| u.as_str()),
                entry.get("password").and_then(|p| p.as_str()),
            ) {
                (Some(u), Some(p)) => Some((u.to_owned(), p.to_owned())),
                _ => None,
            }
        };
        if let Some(pair) = pair {
            out.insert(host.to_owned(), pair);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
    }

    #[test]
    fn loopback_and_insecure_registries_may_use_plain_http_others_not() {
        let c = RegistryClient::new(&RegistryOptions {
            insecure: vec!["reg.lan:5000".into()],
            auth_file: Some("/nonexistent".into()),
        })
        .expect("client");
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "reg.lan:5000",
        ] {
            assert!(c.allows_plain_http(h), "{h}");
        }
        for h in [
            "docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.evil.com",
            "reg.lan:5001",
        ] {
            assert!(!c.allows_plain_http(h), "{h}");
        }
    }

    // A tiny HTTP/1.1 server for the transport tests: plain or TLS on 127.0.0.1, one
    // request per connection, answering through `handler(path, authorization)`. It records
    // what reached it, including TLS hellos on the plain port and plain requests on the
    // TLS port, which it refuses as Go's net/http does.

    /// A throwaway CA and a certificate it signed for registry.test, localhost and
    /// 127.0.0.1 (EC P-256, valid until 2126), made with the openssl CLI for these tests.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBpDCCAUugAwIBAgIUVqvgPBUcu8y68mt8Pspc2vqXascwCgYIKoZIzj0EAwIw
JzElMCMGA1UEAwwcY29ycmFsIHJlZ2lzdHJ5IHVuaXQtdGVzdCBDQTAgFw0yNjEx
MjIxMDEzMTNaGA8yMTI2MTAyOTEwMTMxM1owJzElMCMGA1UEAwwcY29ycmFsIHJl
Z2lzdHJ5IHVuaXQtdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABAUY
SmbgGFswI8QQhmEy0C1jhO3o6ONXRomCMa1NxJs+MRQPhsOB9gW9oQS9hRKWd8Zq
MHIJon6uQZEXned5nPajUzBRMB0GA1UdDgQWBBQFrfMXJ8iaiBFUIfJfI/9sQ99u
rzAfBgNVHSMEGDAWgBQFrfMXJ8iaiBFUIfJfI/9sQ99urzAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0cAMEQCICjzTJF02g0ijVkEFh3sRPdYpWbZ1cQY/0of
ggfm6RZyAiA+4+h49iuz+MIqmcrJAOo3Q8JZLELEVUDKS4ooyU3LEA==
-----END CERTIFICATE-----
";
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIB0jCCAXigAwIBAgIUBtKj/61Zjtnhe2ttfPxuRxwJoYowCgYIKoZIzj0EAwIw
JzElMCMGA1UEAwwcY29ycmFsIHJlZ2lzdHJ5IHVuaXQtdGVzdCBDQTAgFw0yNjEx
MjIxMDEzMTNaGA8yMTI2MTAyOTEwMTMxM1owGDEWMBQGA1UEAwwNcmVnaXN0cnku
dGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABISfgEQiGCO5qoyTckkQAtSi
p7hI7KFk7TU87/6+tJ5DK6agzsd8yyQlQokaX7dehXNVIb8w5dQpRH6F0gIzYy+j
gY4wgYswKQYDVR0RBCIwIIINcmVnaXN0cnkudGVzdIIJbG9jYWxob3N0hwR/AAAB
MAkGA1UdEwQCMAAwEwYDVR0lBAwwCgYIKwYBBQUHAwEwHQYDVR0OBBYEFIzZE/CU
AHB55mg9SaN9m9mYW5C3MB8GA1UdIwQYMBaAFAWt8xcnyJqIEVQh8l8j/2xD326v
MAoGCCqGSM49BAMCA0gAMEUCIQDjkOV5q+BwFsYevZqG3jFG/hlZPpRV8cdrxG6w
uvKsDQIgFLCnHNzCbWhQhNYFOJYrmzXsjztyhmzw/aDCo15nVNI=
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJfXn+HmQWT2WU+4c
+p7tRl4FeTm8a2jwZIgzM/Lx/XuhRANCAASEn4BEIhgjuaqMk3JJEALUoqe4SOyh
ZO01PO/+vrSeQyumoM7HfMskJUKJGl+3XoVzVSG/MOXUKUR+hdICM2Mv
-----END PRIVATE KEY-----
";

    type Handler = dyn Fn(&str, Option<&str>) -> String + Send + Sync;
    type Log = std::sync::Arc<Mutex<Vec<String>>>;

    /// What Go's net/http answers to plain HTTP on a TLS port.
    const PLAIN_ON_TLS: &[u8] =
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

    struct TestServer {
        port: u16,
        seen: Log,
    }

    impl TestServer {
        async fn start(tls: bool, handler: Box<Handler>) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let seen = Log::default();
            let acceptor = tls.then(tls_acceptor);
            let handler: std::sync::Arc<Handler> = handler.into();
            let log = seen.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (log, handler, acceptor) = (log.clone(), handler.clone(), acceptor.clone());
                    tokio::spawn(serve_one(tcp, acceptor, handler, log));
                }
            });
            Self { port, seen }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("seen").clone()
        }
    }

    async fn serve_one(
        mut tcp: tokio::net::TcpStream,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        handler: std::sync::Arc<Handler>,
        log: Log,
    ) {
        use tokio::io::AsyncReadExt as _;
        let push = |e: String| log.lock().expect("log").push(e);
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
            return;
        }
        let is_tls = first[0] == 0x16;
        let mut stream: Box<dyn Stream> = match (acceptor, is_tls) {
            (Some(a), true) => match a.accept(tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => return push(format!("tls handshake failed: {e}")),
            },
            (None, false) => Box::new(tcp),
            (Some(_), false) => {
                push("plain request on the TLS port".into());
                let _ = tcp.write_all(PLAIN_ON_TLS).await;
                return;
            }
            (None, true) => {
                push("TLS hello on the plain port".into());
                let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                return;
            }
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let authorization = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_owned())
        });
        let scheme = if is_tls { "https" } else { "http" };
        push(format!("{scheme} GET {path}"));
        let reply = handler(&path, authorization.as_deref());
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

    fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("key");
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    fn reply(status: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut s = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.push_str(body);
        s
    }

    const MANIFEST: &str = r#"{"schemaVersion":2}"#;

    fn manifest_reply() -> String {
        reply("200 OK", &[("Content-Type", MT_OCI_MANIFEST)], MANIFEST)
    }

    /// A client trusting the test CA (beside the usual roots), resolving `registry.test`
    /// and `auth.test` to 127.0.0.1.
    fn client(insecure: &[&str], creds: Option<&str>, trust_test_ca: bool) -> RegistryClient {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.json");
        let auths = match creds {
            Some(host_user_pass) => {
                let (host, up) = host_user_pass.split_once('=').expect("host=user:pass");
                let b64 = base64::engine::general_purpose::STANDARD.encode(up);
                format!(r#"{{"auths":{{"{host}":{{"auth":"{b64}"}}}}}}"#)
            }
            None => "{}".to_owned(),
        };
        std::fs::write(&file, auths).expect("write");
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        RegistryClient::with_http(
            &RegistryOptions {
                insecure: insecure.iter().map(|s| s.to_string()).collect(),
                auth_file: Some(file),
            },
            || {
                let mut b = reqwest::Client::builder()
                    .resolve("registry.test", local)
                    .resolve("auth.test", local);
                if trust_test_ca {
                    b = b.add_root_certificate(
                        reqwest::Certificate::from_pem(TEST_CA.as_bytes()).expect("ca"),
                    );
                }
                b
            },
        )
        .expect("client")
    }

    fn reference(s: &str) -> Reference {
        Reference::parse(s).expect("reference")
    }

    #[tokio::test]
    async fn plain_http_loopback_registry_is_reached_after_https_fails_and_remembered() {
        let srv = TestServer::start(false, Box::new(|_, _| manifest_reply())).await;
        let c = client(&[], None, false);
        let registry = format!("127.0.0.1:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        assert_eq!(c.scheme(&registry), None);
        let (bytes, _, _) = c.manifest(&r, "1").await.expect("first pull");
        assert_eq!(bytes, MANIFEST.as_bytes());
        assert_eq!(c.scheme(&registry), Some("http"));
        c.manifest(&r, "1").await.expect("second pull");
        assert_eq!(
            srv.seen(),
            [
                "TLS hello on the plain port",
                "http GET /v2/test/bb/manifests/1",
                "http GET /v2/test/bb/manifests/1",
            ],
            "HTTPS tried once, then plain HTTP only"
        );
    }

    #[tokio::test]
    async fn registries_not_allowed_plain_http_never_fall_back() {
        let srv = TestServer::start(false, Box::new(|_, _| manifest_reply())).await;
        let registry = format!("registry.test:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let strict = client(&[], None, false);
        let err = strict.manifest(&r, "1").await.expect_err("no HTTPS there");
        assert!(err.to_string().contains("GET https://"), "{err}");
        assert!(!err.to_string().contains("http://"), "{err}");
        assert_eq!(strict.scheme(&registry), None);
        assert_eq!(srv.seen(), ["TLS hello on the plain port"]);
        // Listed as insecure, the same registry is reached over plain HTTP.
        let lax = client(&[&registry], None, false);
        lax.manifest(&r, "1").await.expect("insecure registry");
        assert_eq!(lax.scheme(&registry), Some("http"));
    }

    #[tokio::test]
    async fn tls_loopback_registry_stays_on_https_even_on_http_errors() {
        // Every request is refused: a 401 over HTTPS must not send anyone to plain HTTP.
        let srv = TestServer::start(
            true,
            Box::new(|_, _| {
                reply(
                    "401 Unauthorized",
                    &[("WWW-Authenticate", r#"Basic realm="test""#)],
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                )
            }),
        )
        .await;
        let registry = format!("localhost:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let c = client(&[], None, true);
        let err = c.manifest(&r, "1").await.expect_err("unauthorized");
        assert!(
            err.to_string()
                .contains("unauthorized: no credentials configured"),
            "{err}"
        );
        assert_eq!(c.scheme(&registry), Some("https"));
        // With (wrong) credentials the Basic retry also stays on HTTPS.
        let c = client(&[], Some(&format!("{registry}=bob:wrong")), true);
        let err = c.manifest(&r, "1").await.expect_err("refused");
        assert!(
            err.to_string()
                .contains("the credentials of bob were refused"),
            "{err}"
        );
        assert!(err.to_string().contains("https://"), "{err}");
        let seen = srv.seen();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|s| s.starts_with("https GET")), "{seen:?}");
    }

    #[tokio::test]
    async fn untrusted_certificate_on_loopback_explains_the_https_failure() {
        let srv = TestServer::start(true, Box::new(|_, _| manifest_reply())).await;
        let registry = format!("127.0.0.1:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let c = client(&[], None, false);
        let err = c.manifest(&r, "1").await.expect_err("untrusted");
        let msg = err.to_string();
        assert!(msg.contains("certificate"), "{msg}");
        assert!(
            msg.contains("over plain HTTP because HTTPS failed"),
            "{msg}"
        );
        assert!(msg.contains("400"), "{msg}");
    }

    #[tokio::test]
    async fn token_realm_over_plain_http_only_on_loopback_or_for_plain_registries() {
        let token_srv = TestServer::start(
            false,
            Box::new(|_, _| {
                reply(
                    "200 OK",
                    &[("Content-Type", "application/json")],
                    r#"{"token":"tok"}"#,
                )
            }),
        )
        .await;
        let realm_port = token_srv.port;
        let make_registry = |realm_host: &'static str| {
            Box::new(move |_: &str, authz: Option<&str>| {
                if authz == Some("Bearer tok") {
                    return manifest_reply();
                }
                let challenge = format!(
                    r#"Bearer realm="http://{realm_host}:{realm_port}/token",service="reg""#
                );
                reply("401 Unauthorized", &[("WWW-Authenticate", &challenge)], "")
            })
        };
        // A registry over verified HTTPS: its credentials go to a plain-HTTP realm only
        // on loopback.
        let srv = TestServer::start(true, make_registry("auth.test")).await;
        let registry = format!("registry.test:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let c = client(&[], Some(&format!("{registry}=bob:pw")), true);
        let err = c.manifest(&r, "1").await.expect_err("realm refused");
        assert!(err.to_string().contains("refusing token realm"), "{err}");
        assert!(token_srv.seen().is_empty());
        let srv = TestServer::start(true, make_registry("127.0.0.1")).await;
        let registry = format!("registry.test:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let c = client(&[], Some(&format!("{registry}=bob:pw")), true);
        c.manifest(&r, "1").await.expect("loopback realm");
        assert_eq!(c.scheme(&registry), Some("https"));
        // A registry already spoken to over plain HTTP may use a plain-HTTP realm anywhere.
        let srv = TestServer::start(false, make_registry("auth.test")).await;
        let registry = format!("registry.test:{}", srv.port);
        let r = reference(&format!("{registry}/test/bb:1"));
        let c = client(&[&registry], Some(&format!("{registry}=bob:pw")), true);
        c.manifest(&r, "1")
            .await
            .expect("plain registry, plain realm");
        assert_eq!(c.scheme(&registry), Some("http"));
        let tokens: Vec<String> = token_srv.seen();
        assert_eq!(tokens.len(), 2, "{tokens:?}");
        assert!(
            tokens
                .iter()
                .all(|t| t.contains("scope=repository%3Atest%2Fbb%3Apull")
                    && t.contains("service=reg")
                    && t.contains("account=bob")),
            "{tokens:?}"
        );
    }

    #[test]
    fn docker_config_credentials_load() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"ghcr.io":{{"username":"u","password":"p"}}}}}}"#
            ),
        )
        .expect("write");
        let c = load_credentials(&f).expect("load");
        assert_eq!(c["docker.io"], ("bob".into(), "s3cret".into()));
        assert_eq!(c["ghcr.io"], ("u".into(), "p".into()));
    }
}
