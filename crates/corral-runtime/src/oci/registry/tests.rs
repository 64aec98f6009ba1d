use super::*;

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
            let challenge =
                format!(r#"Bearer realm="http://{realm_host}:{realm_port}/token",service="reg""#);
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
