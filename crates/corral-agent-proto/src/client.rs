//! The server's client of sandbox agents, over their unix sockets.
//!
//! Requests go through a pooled HTTP/1.1 client (hyper-util's pool): a URI's host is the
//! sandbox id, and the connector maps it to the agent's socket through the runtime
//! (`Runtime::agent_socket`). Keep-alive connections are reused across requests, which saves
//! a connect and a handshake per exec. Upgrades (WebSockets, preview tunnels) take a
//! connection of their own ([`AgentClient::connect`], [`AgentClient::upgrade`]), never a
//! pooled one.
//!
//! The client is generic over the request body type `B` (the server's is axum's `Body`), so
//! proxied bodies stream through without another boxing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_core::Runtime;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::{
    DeleteQuery, ErrorBody, FILE_INFO_PATH, FILES_PATH, FOLDER_PATH, FileInfo, FolderQuery,
    PERMISSIONS_PATH, PathQuery, PermissionsQuery, RUN_PATH, RunFrame, RunRequest, TUNNEL_PROTOCOL,
    UNTAR_PATH, UPLOAD_PATH, UntarAnswer, UntarQuery, tunnel_path,
};

/// What a request body's error may be.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest error answer read when a tunnel is refused.
const TUNNEL_ERROR_LIMIT: usize = 64 << 10;
/// The multipart boundary of uploads (never in a path; the content is not scanned for it,
/// the agent reads the `file` part up to its closing boundary).
const BOUNDARY: &str = "corral-build-7f3a9c1e5b";

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's socket did not accept a connection of our own.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// A pooled request got no answer (connect, send or the answer's head failed).
    #[error("{0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// The handshake or the request on a connection of our own failed.
    #[error("{0}")]
    Handshake(#[source] hyper::Error),
    /// The answer's body broke off.
    #[error("{0}")]
    Body(#[source] hyper::Error),
    /// The agent answered another status than the route's; `body` is its answer (an
    /// [`ErrorBody`] when it is the agent's own).
    #[error("{}", error_message(body).unwrap_or_else(|| format!("the agent answered {status}")))]
    Status { status: StatusCode, body: Bytes },
    /// The answer is not the route's type.
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[source] serde_json::Error),
    /// The request could not be written (an id or path that is no URI).
    #[error("{0}")]
    Invalid(String),
}

/// The `message` of an agent's error answer, when `body` is one.
pub fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.message)
}

/// The pooled client of every sandbox's agent.
pub struct AgentClient<B> {
    pool: Client<AgentConnector, B>,
    connector: AgentConnector,
}

impl<B> Clone for AgentClient<B> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            connector: self.connector.clone(),
        }
    }
}

impl<B> std::fmt::Debug for AgentClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentClient")
    }
}

impl<B> AgentClient<B>
where
    B: Body<Data = Bytes> + From<Bytes> + Default + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A client reaching each sandbox's agent at `runtime.agent_socket(id)`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        let connector = AgentConnector { runtime };
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector.clone());
        Self { pool, connector }
    }

    /// The URI of `path_and_query` (starting with `/`) at sandbox `id`'s agent, for
    /// [`AgentClient::request`].
    pub fn uri(id: &str, path_and_query: &str) -> Result<Uri, AgentError> {
        format!("http://{id}{path_and_query}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| AgentError::Invalid(e.to_string()))
    }

    /// Sends `req` as it is over a pooled connection; its URI's host is the sandbox id
    /// ([`AgentClient::uri`]). The toolbox proxy's way.
    pub async fn request(
        &self,
        req: Request<B>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.pool.request(req).await
    }

    /// A connection of its own to sandbox `id`'s agent.
    pub async fn connect(&self, id: &str) -> std::io::Result<UnixStream> {
        UnixStream::connect(self.connector.runtime.agent_socket(id)).await
    }

    /// Sends `req` (origin-form URI) on a connection of its own to sandbox `id`'s agent that
    /// stays open for an upgrade: after a `101`, `hyper::upgrade::on` the answer gives the
    /// raw connection.
    pub async fn upgrade(
        &self,
        id: &str,
        req: Request<B>,
    ) -> Result<Response<Incoming>, AgentError> {
        let stream = self.connect(id).await.map_err(AgentError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream))
                .await
                .map_err(AgentError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended with an error");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(AgentError::Handshake)
    }

    /// `POST /corral/run`: starts `run` and gives its frames as they come.
    pub async fn run(&self, id: &str, run: &RunRequest) -> Result<RunFrames, AgentError> {
        let body = serde_json::to_vec(run).map_err(AgentError::Decode)?;
        let req = builder(Method::POST, Self::uri(id, RUN_PATH)?)
            .header(header::CONTENT_TYPE, "application/json")
            .body(B::from(Bytes::from(body)))
            .map_err(invalid)?;
        let resp = self.pool.request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(status_error(resp).await);
        }
        Ok(RunFrames {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// `POST /corral/untar?query` with the tar stream `body`.
    pub async fn untar(
        &self,
        id: &str,
        query: &UntarQuery,
        body: B,
    ) -> Result<UntarAnswer, AgentError> {
        let req = builder(
            Method::POST,
            Self::uri(id, &with_query(UNTAR_PATH, query)?)?,
        )
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(body)
        .map_err(invalid)?;
        self.call(req).await
    }

    /// `GET /files/info?path`.
    pub async fn file_info(&self, id: &str, path: &str) -> Result<FileInfo, AgentError> {
        let query = PathQuery {
            path: Some(path.to_owned()),
        };
        let req = builder(
            Method::GET,
            Self::uri(id, &with_query(FILE_INFO_PATH, &query)?)?,
        )
        .body(B::default())
        .map_err(invalid)?;
        self.call(req).await
    }

    /// `POST /files/folder?path&mode`: creates a directory; an existing one is fine.
    pub async fn mkdir(&self, id: &str, query: &FolderQuery) -> Result<(), AgentError> {
        let req = builder(
            Method::POST,
            Self::uri(id, &with_query(FOLDER_PATH, query)?)?,
        )
        .body(B::default())
        .map_err(invalid)?;
        self.send(req).await.map(drop)
    }

    /// `DELETE /files?path[&recursive]`.
    pub async fn delete(&self, id: &str, query: &DeleteQuery) -> Result<(), AgentError> {
        let req = builder(
            Method::DELETE,
            Self::uri(id, &with_query(FILES_PATH, query)?)?,
        )
        .body(B::default())
        .map_err(invalid)?;
        self.send(req).await.map(drop)
    }

    /// `POST /files/permissions?path&owner&group&mode`.
    pub async fn permissions(&self, id: &str, query: &PermissionsQuery) -> Result<(), AgentError> {
        let req = builder(
            Method::POST,
            Self::uri(id, &with_query(PERMISSIONS_PATH, query)?)?,
        )
        .body(B::default())
        .map_err(invalid)?;
        self.send(req).await.map(drop)
    }

    /// `POST /files/upload-v2?path`: writes `content` to the file `path`.
    pub async fn upload(&self, id: &str, path: &str, content: &[u8]) -> Result<(), AgentError> {
        let mut body = Vec::with_capacity(content.len() + 256);
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        let query = PathQuery {
            path: Some(path.to_owned()),
        };
        let req = builder(
            Method::POST,
            Self::uri(id, &with_query(UPLOAD_PATH, &query)?)?,
        )
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(B::from(Bytes::from(body)))
        .map_err(invalid)?;
        self.send(req).await.map(drop)
    }

    /// `GET /port/{port}/tunnel`: a raw byte tunnel to `port` inside sandbox `id`. A port
    /// nothing listens on is an [`AgentError::Status`] carrying the agent's reason.
    pub async fn tunnel(
        &self,
        id: &str,
        port: u16,
    ) -> Result<hyper::upgrade::Upgraded, AgentError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(tunnel_path(port))
            .header(header::HOST, HeaderValue::from_static("agent"))
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, TUNNEL_PROTOCOL)
            .body(B::default())
            .map_err(invalid)?;
        let mut resp = self.upgrade(id, req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let body = Limited::new(resp.into_body(), TUNNEL_ERROR_LIMIT)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(AgentError::Status { status, body });
        }
        hyper::upgrade::on(&mut resp)
            .await
            .map_err(AgentError::Handshake)
    }

    /// Sends `req`; the whole body of a success, else [`AgentError::Status`].
    async fn send(&self, req: Request<B>) -> Result<Bytes, AgentError> {
        let resp = self.pool.request(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(AgentError::Body)?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(AgentError::Status { status, body })
        }
    }

    /// [`AgentClient::send`], the answer read as `T`.
    async fn call<T: DeserializeOwned>(&self, req: Request<B>) -> Result<T, AgentError> {
        let body = self.send(req).await?;
        serde_json::from_slice(&body).map_err(AgentError::Decode)
    }
}

/// The frames of a `POST /corral/run` answer, as they arrive.
#[derive(Debug)]
pub struct RunFrames {
    body: Incoming,
    buf: Vec<u8>,
}

impl RunFrames {
    /// The next frame; `None` at the end of the answer. Lines that are no frame are skipped,
    /// and so is a last line without its `\n` (a cut answer).
    pub async fn next(&mut self) -> Option<Result<RunFrame, AgentError>> {
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if let Ok(frame) = serde_json::from_slice::<RunFrame>(&line) {
                    return Some(Ok(frame));
                }
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(e) => return Some(Err(AgentError::Body(e))),
            }
        }
    }
}

fn builder(method: Method, uri: Uri) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HeaderValue::from_static("agent"))
}

fn with_query<Q: Serialize>(path: &str, query: &Q) -> Result<String, AgentError> {
    let query =
        serde_urlencoded::to_string(query).map_err(|e| AgentError::Invalid(e.to_string()))?;
    Ok(if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    })
}

fn invalid(e: hyper::http::Error) -> AgentError {
    AgentError::Invalid(e.to_string())
}

/// The [`AgentError::Status`] of an unexpected answer (its body read whole).
async fn status_error(resp: Response<Incoming>) -> AgentError {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    AgentError::Status { status, body }
}

/// Connects to the agent socket of the URI's host (a sandbox id).
#[derive(Clone)]
pub struct AgentConnector {
    runtime: Arc<dyn Runtime>,
}

impl std::fmt::Debug for AgentConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentConnector")
    }
}

impl tower_service::Service<Uri> for AgentConnector {
    type Response = AgentStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<AgentStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let path = uri.host().map(|id| self.runtime.agent_socket(id));
        Box::pin(async move {
            let path =
                path.ok_or_else(|| std::io::Error::other("agent URI without a sandbox id"))?;
            Ok(AgentStream(TokioIo::new(UnixStream::connect(path).await?)))
        })
    }
}

/// A pooled connection to an agent.
#[derive(Debug)]
pub struct AgentStream(TokioIo<UnixStream>);

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AgentStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AgentStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A request body the server makes itself (JSON, a file, a streamed tar), for a client whose
/// callers have no body type of their own (the engine's build steps; the toolbox proxy uses
/// axum's). Wraps a boxed body, adding what [`AgentClient`] needs: `From<Bytes>` and
/// `Default`.
pub struct RequestBody(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>);

impl RequestBody {
    /// A body streamed from `chunks`; an `Err` ends it with that error, so the agent does not
    /// take a cut stream for whole.
    pub fn from_stream<S>(chunks: S) -> Self
    where
        S: futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
    {
        let frames = StreamFrames(Box::pin(chunks));
        Self(http_body_util::StreamBody::new(frames).boxed_unsync())
    }
}

/// The frames of a byte stream.
struct StreamFrames(
    Pin<Box<dyn futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send>>,
);

impl futures_core::Stream for StreamFrames {
    type Item = Result<hyper::body::Frame<Bytes>, BoxError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx).map(|item| {
            item.map(|r| {
                r.map(|b| hyper::body::Frame::data(Bytes::from(b)))
                    .map_err(BoxError::from)
            })
        })
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        Self(
            http_body_util::Full::new(b)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}
