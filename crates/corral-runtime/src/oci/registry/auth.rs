//! Registry authentication: the `WWW-Authenticate` Basic and Bearer token flows, and
//! credentials from a Docker-style `config.json`.

use super::fetch::read_limited;
use super::*;

impl RegistryClient {
    pub(super) async fn authenticate(
        &self,
        r: &Reference,
        challenge: &str,
    ) -> Result<Auth, OciError> {
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

pub(super) fn default_auth_file() -> Option<PathBuf> {
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
