//! Reads what an upload handler left of the request body before the answer goes out.
//!
//! A multipart parser stops at the closing boundary; a client may still be sending the
//! epilogue after it (Node's form-data ends with `--boundary--\r\n`, sometimes in a packet of
//! its own). If the agent answered and closed then, the server's proxy, still writing those
//! bytes, would get a broken pipe instead of the answer (seen as a 502 about 5% of the time
//! with the TypeScript SDK's uploads). So the body is shared with the handler, and whatever
//! is left afterwards is read and dropped, within bounds.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The most left-over body read before answering anyway.
const MAX_UNREAD: usize = 1 << 20;
/// How long the rest may take to arrive.
const UNREAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A body the handler reads while the middleware keeps a handle on it.
struct Shared(Arc<Mutex<Body>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_end_stream()
    }
}

/// Middleware: runs the handler, then drains the request body's remainder.
pub async fn drain_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(body));
    let response = next
        .run(Request::from_parts(
            parts,
            Body::new(Shared(shared.clone())),
        ))
        .await;
    let mut rest = std::mem::replace(
        &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
        Body::empty(),
    );
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut rest).await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_UNREAD {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(UNREAD_TIMEOUT, drain).await;
    response
}
