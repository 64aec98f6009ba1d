//! A pooled HTTP/1.1 client to sandbox agents over their unix sockets.
//!
//! The URI's host is the sandbox id; the connector maps it to the agent's socket through
//! the runtime. Keep-alive connections are reused across toolbox requests (hyper-util's
//! pool), which saves a connect and a handshake per exec. WebSocket upgrades do not use
//! the pool (see `toolbox.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use corral_core::Runtime;
use http::Uri;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

/// A request body sent to an agent by the engine.
pub type AgentBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The engine's client type.
pub type AgentClient = Client<AgentConnector, AgentBody>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> AgentBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> AgentBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from `chunks`.
pub fn stream<S>(chunks: S) -> AgentBody
where
    S: futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
{
    use futures_util::StreamExt as _;
    http_body_util::StreamBody::new(
        chunks.map(|c| c.map(|b| hyper::body::Frame::data(Bytes::from(b)))),
    )
    .boxed_unsync()
}

/// Builds a pooled client, with request bodies of type `B`.
pub fn client<B>(runtime: Arc<dyn Runtime>) -> Client<AgentConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build(AgentConnector { runtime })
}

/// Connects to `<agent socket of uri.host>`.
#[derive(Clone)]
pub struct AgentConnector {
    runtime: Arc<dyn Runtime>,
}

impl std::fmt::Debug for AgentConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentConnector")
    }
}

impl tower::Service<Uri> for AgentConnector {
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

/// A connection to an agent.
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
