//! A served connection and its timeouts: the phase it is in ([`Watch`]: waiting for a head,
//! busy, idle, upgraded), its reads enforcing the phase's deadline ([`Conn`]), and the
//! response body that marks the end of a response ([`Tracked`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Limits;
use super::admission::Slot;
use super::tls::Stream;

/// Where a connection is in its life, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head (the rest of it) since this instant.
    Head(Instant),
    /// A response has ended at this instant; waiting for the next request's first byte.
    Idle(Instant),
    /// A request is being served: its body read, its response streamed. No timeout.
    Busy,
    /// The connection switched protocols (a WebSocket). No timeout.
    Upgraded,
}

/// A connection's phase, shared by its reads (which enforce the deadline) and the service
/// (which sees requests begin and responses end).
#[derive(Debug)]
pub(super) struct Watch(Mutex<WatchState>);

#[derive(Debug)]
struct WatchState {
    phase: Phase,
    /// The task of a read left pending with no deadline: woken when a deadline starts, so
    /// that its next read arms the timer (hyper may not read again by itself when a
    /// response ends, its read interest being registered already).
    parked: Option<Waker>,
}

impl Watch {
    pub(super) fn new(accepted: Instant) -> Self {
        Self(Mutex::new(WatchState {
            phase: Phase::Head(accepted),
            parked: None,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        self.state().phase
    }

    /// A request head is complete.
    pub(super) fn request_began(&self) {
        self.state().phase = Phase::Busy;
    }

    /// The response switches protocols: the connection is no longer HTTP's.
    pub(super) fn upgraded(&self) {
        self.state().phase = Phase::Upgraded;
    }

    /// The response body ended (or was dropped): the idle timeout starts.
    fn response_ended(&self) {
        let mut state = self.state();
        if state.phase == Phase::Busy {
            state.phase = Phase::Idle(Instant::now());
            if let Some(waker) = state.parked.take() {
                waker.wake();
            }
        }
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn bytes_read(&self) {
        let mut state = self.state();
        if matches!(state.phase, Phase::Idle(_)) {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// The deadline of the current phase and what it waits for; with none, `cx`'s task is
    /// parked until one starts.
    fn deadline(&self, limits: &Limits, cx: &Context<'_>) -> Option<(Instant, &'static str)> {
        let mut state = self.state();
        match state.phase {
            Phase::Head(since) => Some((since + limits.header_timeout, "header")),
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle")),
            Phase::Busy => {
                match &mut state.parked {
                    Some(w) => w.clone_from(cx.waker()),
                    None => state.parked = Some(cx.waker().clone()),
                }
                None
            }
            Phase::Upgraded => None,
        }
    }
}

/// A served connection: its stream, its phase and the slot it holds until it is dropped
/// (an upgraded connection's stream moves into the WebSocket, and its slot with it).
pub struct Conn {
    pub(super) stream: Stream,
    pub(super) watch: Arc<Watch>,
    pub(super) limits: Limits,
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    pub(super) _slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("phase", &self.watch.phase())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.stream.pinned().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.watch.bytes_read();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Nothing to read: the phase's deadline (if any) wakes this task when it passes.
        let Some((deadline, waiting_for)) = this.watch.deadline(&this.limits, cx) else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        metrics::counter!("corral_connections_timed_out_total", "waiting_for" => waiting_for)
            .increment(1);
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no request {waiting_for} in time"),
        )))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().stream.pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().stream.pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().stream.pinned().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().stream.pinned().poll_shutdown(cx)
    }
}

/// A response body that tells the connection's [`Watch`] when it ends (or is dropped).
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) watch: Arc<Watch>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.watch.response_ended();
    }
}
