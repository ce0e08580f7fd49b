//! The task of one connection, written as a state machine by hand.
//!
//! It lives as long as the connection, so its size is memory per idle
//! connection (workload C of the comparison). An `async fn` kept its
//! arguments, the wake-up future and every local live across an await in
//! the future, each in room of its own; [`Connection`] keeps the WebSocket,
//! the handles it needs and one small [`Step`], and boxes what is large and
//! rare (the accept reply, a send into a full hub channel, the frames after
//! the first of a large message).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::sync::{mpsc, oneshot};

use super::hub_task::{ConnShared, HubInput};
use super::{Admission, LOG};
use crate::server::ConnId;
use crate::transport::client::BoxFuture;

/// Serves one upgraded WebSocket until it closes: reads messages into the
/// hub task's channel (unless the hub paused the connection), writes the
/// frames the hub task queued for it (the whole queue at once, one flush),
/// then the WebSocket close, and tells the hub when the connection is gone.
pub(crate) struct Connection<S, M: WsFrame> {
    ws: S,
    to_hub: mpsc::Sender<HubInput>,
    shared: Arc<ConnShared>,
    /// The hub's id for it (meaningless until accepted).
    conn: ConnId,
    /// The frames being written, taken whole from the outgoing queue (no
    /// allocation while idle).
    batch: VecDeque<Vec<u8>>,
    /// The frames after the first of the large message being written.
    rest: Option<Box<M::Rest>>,
    step: Step,
    _admission: Admission,
}

/// Where a [`Connection`] is.
enum Step {
    /// Handing the socket to the hub task; waiting for its id.
    Accepting(BoxFuture<Option<ConnId>>),
    /// Reading the socket (unless paused) and waiting for frames or a close
    /// to write: the usual state.
    Open,
    /// Writing `batch`, then flushing.
    Writing,
    /// Waiting for room in the hub's channel (it was full); `false` when
    /// the hub task ended.
    Sending(BoxFuture<bool>),
    /// Writing a WebSocket close frame (`None`: written, flushing); then
    /// telling the hub the connection is gone, when it was accepted.
    Closing(Option<Box<(u16, String)>>, bool),
    /// Telling the hub the connection is gone, while its channel is full.
    Ending(BoxFuture<bool>),
    Done,
}

/// What [`Connection::offer`] did with an input.
enum Offer {
    Sent,
    /// The hub task has ended.
    Gone,
    /// The hub's channel is full: wait on this.
    Full(BoxFuture<bool>),
}

impl<S, M: WsFrame> Connection<S, M> {
    pub(super) fn new(
        ws: S,
        to_hub: mpsc::Sender<HubInput>,
        addr: Option<SocketAddr>,
        admission: Admission,
    ) -> Self {
        let shared = Arc::new(ConnShared::default());
        let accept = {
            let to_hub = to_hub.clone();
            let shared = Arc::clone(&shared);
            Box::pin(async move {
                let (reply, rx) = oneshot::channel();
                let input = HubInput::Accept {
                    shared,
                    addr,
                    reply,
                };
                match to_hub.send(input).await {
                    Ok(()) => rx.await.ok(),
                    Err(_) => None,
                }
            })
        };
        Connection {
            ws,
            to_hub,
            shared,
            conn: ConnId(0),
            batch: VecDeque::new(),
            rest: None,
            step: Step::Accepting(accept),
            _admission: admission,
        }
    }

    /// Hands `input` to the hub task; waits (boxed, the connection stays
    /// small) only when its channel is full.
    fn offer(&self, input: HubInput) -> Offer {
        match self.to_hub.try_send(input) {
            Ok(()) => Offer::Sent,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
            Err(mpsc::error::TrySendError::Full(input)) => {
                let to_hub = self.to_hub.clone();
                Offer::Full(Box::pin(async move { to_hub.send(input).await.is_ok() }))
            }
        }
    }

    /// Sends `input`, then goes on with `Open`.
    fn send_then_open(&self, input: HubInput) -> Step {
        match self.offer(input) {
            Offer::Sent => Step::Open,
            Offer::Gone => self.end(),
            Offer::Full(send) => Step::Sending(send),
        }
    }

    /// The connection is gone: tells the hub.
    fn end(&self) -> Step {
        match self.offer(HubInput::Lost(self.conn)) {
            Offer::Sent | Offer::Gone => Step::Done,
            Offer::Full(send) => Step::Ending(send),
        }
    }
}

impl<S, M, E> Connection<S, M>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: WsFrame,
    E: core::fmt::Display,
{
    /// [`Step::Open`]: what to write first, else one message read.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        // Registered before looking, so a wake-up in between is not lost.
        self.shared.wake.register(cx.waker());
        {
            let mut out = self.shared.outgoing();
            if !out.frames.is_empty() {
                std::mem::swap(&mut self.batch, &mut out.frames);
                out.bytes = 0;
                return Poll::Ready(Step::Writing);
            }
            // A close comes after the frames queued before it.
            if let Some(close) = out.close.take() {
                tracing::debug!(target: LOG, conn = self.conn.0, code = close.0, reason = %close.1, "closing WebSocket");
                return Poll::Ready(Step::Closing(Some(close), true));
            }
            if out.hub_gone {
                let close = Box::new((1001, "server stopped".to_string()));
                return Poll::Ready(Step::Closing(Some(close), true));
            }
        }
        if self.shared.paused.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Poll::Ready(match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
            Some(Ok(msg)) => match msg.classify() {
                Incoming::Data(bytes) => self.send_then_open(HubInput::Frame(self.conn, bytes)),
                Incoming::Close => self.end(),
                Incoming::Other => Step::Open,
            },
            Some(Err(e)) => {
                tracing::debug!(target: LOG, conn = self.conn.0, error = %e, "socket error");
                self.end()
            }
            None => self.end(),
        })
    }

    /// [`Step::Writing`]: each frame is one WebSocket message (one
    /// `start_send` each, or one per fragment, as the write buffer is off);
    /// one flush for the batch.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.rest.is_none() && self.batch.is_empty() {
                break;
            }
            if ready!(Pin::new(&mut self.ws).poll_ready(cx)).is_err() {
                return Poll::Ready(self.write_failed());
            }
            let part = match self.rest.as_mut().map(|rest| rest.next()) {
                Some(Some(part)) => part,
                Some(None) => {
                    self.rest = None;
                    continue;
                }
                None => {
                    let Some(frame) = self.batch.pop_front() else {
                        break;
                    };
                    let (first, rest) = M::binary_parts(frame);
                    self.rest = rest;
                    first
                }
            };
            if Pin::new(&mut self.ws).start_send(part).is_err() {
                return Poll::Ready(self.write_failed());
            }
        }
        if ready!(Pin::new(&mut self.ws).poll_flush(cx)).is_err() {
            return Poll::Ready(self.write_failed());
        }
        // Release the queue's allocation: an idle connection holds none.
        self.batch = VecDeque::new();
        Poll::Ready(if self.shared.want_writable.swap(false, Ordering::AcqRel) {
            self.send_then_open(HubInput::Writable(self.conn))
        } else {
            Step::Open
        })
    }

    fn write_failed(&mut self) -> Step {
        self.batch = VecDeque::new();
        self.rest = None;
        self.end()
    }

    /// [`Step::Closing`]: errors are ignored, the connection ends anyway.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        let Step::Closing(close, accepted) = &mut self.step else {
            return Poll::Ready(Step::Done);
        };
        let accepted = *accepted;
        if close.is_some() {
            let ready = ready!(Pin::new(&mut self.ws).poll_ready(cx)).is_ok();
            let written = match close.take() {
                Some(close) if ready => {
                    let (code, reason) = *close;
                    Pin::new(&mut self.ws)
                        .start_send(M::close(code, reason))
                        .is_ok()
                }
                _ => false,
            };
            if !written {
                return Poll::Ready(self.closed(accepted));
            }
        }
        let _ = ready!(Pin::new(&mut self.ws).poll_flush(cx));
        Poll::Ready(self.closed(accepted))
    }

    fn closed(&self, accepted: bool) -> Step {
        if accepted { self.end() } else { Step::Done }
    }
}

impl<S, M, E> Future for Connection<S, M>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: WsFrame,
    E: core::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let next = match &mut this.step {
                Step::Accepting(accept) => match ready!(accept.as_mut().poll(cx)) {
                    Some(conn) => {
                        this.conn = conn;
                        Step::Open
                    }
                    None => {
                        let close = Box::new((1001, "server shutting down".to_string()));
                        Step::Closing(Some(close), false)
                    }
                },
                Step::Open => ready!(this.poll_open(cx)),
                Step::Writing => ready!(this.poll_write(cx)),
                Step::Sending(send) => {
                    if ready!(send.as_mut().poll(cx)) {
                        Step::Open
                    } else {
                        this.end()
                    }
                }
                Step::Closing(..) => ready!(this.poll_close(cx)),
                Step::Ending(send) => {
                    ready!(send.as_mut().poll(cx));
                    Step::Done
                }
                Step::Done => return Poll::Ready(()),
            };
            this.step = next;
        }
    }
}

/// The task of an accepted socket: its opening (TLS and WebSocket
/// handshakes, whose state is large and short-lived: boxed), then its
/// [`Connection`] inline.
pub(crate) enum ConnTask<S, M: WsFrame> {
    Opening(BoxFuture<Option<Connection<S, M>>>),
    Open(Connection<S, M>),
    /// Served in a box of its own (a TLS connection, whose stream is large
    /// anyway).
    #[cfg(feature = "tls")]
    Boxed(BoxFuture<()>),
}

impl<S, M, E> Future for ConnTask<S, M>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: WsFrame,
    E: core::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                ConnTask::Opening(open) => match ready!(open.as_mut().poll(cx)) {
                    Some(conn) => *this = ConnTask::Open(conn),
                    None => return Poll::Ready(()),
                },
                ConnTask::Open(conn) => return Pin::new(conn).poll(cx),
                #[cfg(feature = "tls")]
                ConnTask::Boxed(task) => return task.as_mut().poll(cx),
            }
        }
    }
}

/// A WebSocket message type the connection task can carry (tungstenite's,
/// axum's).
pub(crate) trait WsFrame: Sized + Send + 'static {
    /// The WebSocket frames after the first of a fragmented message.
    type Rest: Iterator<Item = Self> + Send + 'static;
    fn binary(data: Vec<u8>) -> Self;
    /// `data` as one binary message: its first WebSocket frame and, where
    /// the library can write fragmented messages and `data` is large, the
    /// frames after it (boxed: only large messages have them). Default: one
    /// frame.
    fn binary_parts(data: Vec<u8>) -> (Self, Option<Box<Self::Rest>>) {
        (Self::binary(data), None)
    }
    fn close(code: u16, reason: String) -> Self;
    fn classify(self) -> Incoming;
}

pub(crate) enum Incoming {
    Data(Vec<u8>),
    Close,
    Other,
}

impl WsFrame for tungstenite::Message {
    type Rest = crate::transport::Fragments;
    fn binary(data: Vec<u8>) -> Self {
        tungstenite::Message::Binary(data.into())
    }
    fn binary_parts(data: Vec<u8>) -> (Self, Option<Box<Self::Rest>>) {
        let (first, rest) = crate::transport::Fragments::split(data);
        (first, rest.map(Box::new))
    }
    fn close(code: u16, reason: String) -> Self {
        tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }))
    }
    fn classify(self) -> Incoming {
        match self {
            tungstenite::Message::Binary(b) => Incoming::Data(b.into()),
            // Not our protocol: the core reports it as bad input.
            tungstenite::Message::Text(t) => Incoming::Data(t.as_bytes().to_vec()),
            tungstenite::Message::Close(_) => Incoming::Close,
            _ => Incoming::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(frames: impl Iterator<Item = tungstenite::Message>) -> (usize, Vec<u8>) {
        let mut n = 0;
        let mut out = Vec::new();
        for m in frames {
            n += 1;
            match m {
                tungstenite::Message::Binary(b) => {
                    assert_eq!(n, 1, "a whole message comes alone");
                    out.extend_from_slice(&b);
                }
                tungstenite::Message::Frame(f) => {
                    assert!(f.len() <= crate::transport::WS_FRAGMENT + 14);
                    out.extend_from_slice(f.payload());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (n, out)
    }

    #[test]
    fn large_messages_are_written_in_fragments() {
        use crate::transport::WS_FRAGMENT;
        for len in [0, 1, WS_FRAGMENT, WS_FRAGMENT + 1, 3 * WS_FRAGMENT, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (first, rest) = <tungstenite::Message as WsFrame>::binary_parts(data.clone());
            assert_eq!(rest.is_some(), len > WS_FRAGMENT, "{len} bytes");
            let (n, out) = reassemble(std::iter::once(first).chain(rest.into_iter().flatten()));
            assert_eq!(out, data, "{len} bytes");
            assert_eq!(n, len.div_ceil(WS_FRAGMENT).max(1), "{len} bytes");
        }
    }
}
