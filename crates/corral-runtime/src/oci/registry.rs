//! A client for the OCI distribution API (what Docker registries speak): manifests and
//! blobs, with the `WWW-Authenticate` token flow and every byte checked against its digest.
//!
//! HTTPS always, except for loopback registries (`localhost`, `127.0.0.0/8`, `::1`) and
//! those listed as insecure, which are spoken to over plain HTTP, as Docker allows.
//! Credentials come from a Docker-style `config.json` (`auths.<host>.auth` = base64
//! `user:password`, or `username`/`password`).

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
    /// Registries (`host` or `host:port`) spoken to over plain HTTP besides loopback ones.
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

/// A distribution API client. Cheap to share; tokens are cached per registry and scope.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    insecure: Vec<String>,
    creds: HashMap<String, (String, String)>,
    auth: Mutex<HashMap<String, Auth>>,
}

impl RegistryClient {
    /// A client with these options (reads the credentials file now).
    pub fn new(opts: &RegistryOptions) -> Result<Self, OciError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| OciError::Registry(format!("http client: {e}")))?;
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
        })
    }

    /// Whether `registry` is spoken to over plain HTTP.
    pub fn plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .insecure
                .iter()
                .any(|i| i == registry || host_of(registry) == i.as_str())
    }

    fn url(&self, r: &Reference, tail: &str) -> String {
        let scheme = if self.plain_http(&r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}/{tail}", r.api_host(), r.repository)
    }

    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
    ) -> Result<reqwest::Response, OciError> {
        let key = format!("{}|repository:{}:pull", r.registry, r.repository);
        let mut fresh = false;
        loop {
            let cached = self.auth.lock().ok().and_then(|m| m.get(&key).cloned());
            let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            match &cached {
                Some(Auth::Bearer(t)) => req = req.bearer_auth(t),
                Some(Auth::Basic) => {
                    if let Some((u, p)) = self.creds.get(&r.registry) {
                        req = req.basic_auth(u, Some(p));
                    }
                }
                None => {}
            }
            let resp = req
                .send()
                .await
                .map_err(|e| OciError::Registry(format!("GET {url}: {}", chain(&e))))?;
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
                return Err(OciError::Registry(format!(
                    "GET {url}: {status}: {}",
                    body.trim()
                )));
            }
            return Ok(resp);
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
                let realm_host = realm_url.host_str().unwrap_or("");
                if realm_url.scheme() != "https"
                    && !(realm_url.scheme() == "http" && self.plain_http(realm_host))
                    && !(realm_url.scheme() == "http" && self.plain_http(&r.registry))
                {
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
                let mut req = self.http.get(realm_url).query(&query);
                if let Some((u, p)) = creds {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.map_err(|e| {
                    OciError::Registry(format!("token from {realm}: {}", chain(&e)))
                })?;
                if !resp.status().is_success() {
                    return Err(OciError::Registry(format!(
                        "token from {realm}: {} (check the credentials for {})",
                        resp.status(),
                        r.registry
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
                    " (no credentials configured)"
                } else {
                    ""
                }
            ))),
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
        let url = self.url(r, &format!("manifests/{reference}"));
        let resp = self.get(r, &url, &accept).await?;
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
        let url = self.url(r, &format!("blobs/{}", desc.digest));
        let resp = self.get(r, &url, "*/*").await?;
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
        let url = self.url(r, &format!("blobs/{}", desc.digest));
        let result = async {
            let mut resp = self.get(r, &url, "*/*").await?;
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
    fn loopback_registries_are_plain_http_others_are_not() {
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
            assert!(c.plain_http(h), "{h}");
        }
        for h in [
            "docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.evil.com",
            "reg.lan:5001",
        ] {
            assert!(!c.plain_http(h), "{h}");
        }
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
