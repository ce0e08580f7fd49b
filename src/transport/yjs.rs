//! The tokio server's y-websocket endpoint ([`ServerOptions::yjs_path`]):
//! a [`YjsSocket`] wraps the upgraded WebSocket so that the connection task
//! and the hub see a native connection, while a
//! [`YjsSession`](crate::ywebsocket::YjsSession) translates both ways.
//!
//! [`ServerOptions::yjs_path`]: crate::transport::ServerOptions::yjs_path

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures_util::{Sink, Stream};
use std::future::Future;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::ServerOptions;
use super::close_code;
use crate::ywebsocket::{YjsConfig, YjsSession};

const LOG: &str = "crdt_socket_sync::transport::yjs";

/// What a y-websocket URL names: the room (the document) and the token.
#[derive(Debug)]
pub(crate) struct YjsTarget {
    room: String,
    token: Vec<u8>,
}

/// `Some` when `path` is under [`ServerOptions::yjs_path`]: y-websocket
/// dials `<server url>/<room>?<params>`; the room is the rest of the path
/// (percent-decoded), the token the `token` query parameter.
pub(crate) fn yjs_target(
    options: &ServerOptions,
    path: &str,
    query: Option<&str>,
) -> Option<YjsTarget> {
    let base = options.yjs_path.as_deref()?.trim_end_matches('/');
    let room = path.strip_prefix(base)?.strip_prefix('/')?;
    if room.is_empty() {
        return None;
    }
    let token = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
        .unwrap_or_default();
    let room = String::from_utf8(percent_decode(room)).ok()?;
    Some(YjsTarget { room, token })
}

fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// A WebSocket carrying y-protocols, seen by the connection task as one
/// carrying this crate's frames.
pub(crate) struct YjsSocket<S> {
    inner: S,
    session: Box<YjsSession>,
    /// The WebSocket close sent after the translator closed the connection.
    close_sent: bool,
    /// Armed at the session's `poll_timeout` (its heartbeat).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> YjsSocket<S> {
    pub(crate) fn new(inner: S, target: YjsTarget, options: &ServerOptions) -> Self {
        let wall_clock_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let config = YjsConfig {
            limits: options.hub.limits,
            wall_clock_ms,
            ..YjsConfig::default()
        };
        let session = YjsSession::new(&target.room, target.token, config, Instant::now());
        YjsSocket {
            inner,
            session: Box::new(session),
            close_sent: false,
            timer: None,
        }
    }
}

impl<S> YjsSocket<S> {
    /// Runs the session's heartbeat when due and re-arms the timer for the
    /// next one (registering the task's waker).
    fn tick(&mut self, cx: &mut Context<'_>) {
        loop {
            let Some(deadline) = self.session.poll_timeout() else {
                self.timer = None;
                return;
            };
            let now = Instant::now();
            if deadline <= now {
                // Moves the deadline past `now`.
                self.session.handle_timeout(now);
                continue;
            }
            let at = tokio::time::Instant::from_std(deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            self.session.handle_timeout(Instant::now().max(deadline));
        }
    }
}

impl<S, E> YjsSocket<S>
where
    S: Sink<Message, Error = E> + Unpin,
{
    /// Writes the translated messages queued for the client.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        loop {
            ready!(Pin::new(&mut self.inner).poll_ready(cx))?;
            let Some(msg) = self.session.poll_to_client() else {
                return Poll::Ready(Ok(()));
            };
            Pin::new(&mut self.inner).start_send(Message::Binary(msg.into()))?;
        }
    }
}

impl<S, E> Stream for YjsSocket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
{
    type Item = Result<Message, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.tick(cx);
        loop {
            // What the heartbeat (or a translated input) has for the client
            // goes now, not with the hub's next frame.
            if this.session.has_client_output() {
                match this.drain(cx) {
                    Poll::Ready(Ok(())) => {
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => {}
                }
            }
            if let Some(frame) = this.session.poll_to_server() {
                return Poll::Ready(Some(Ok(Message::Binary(frame.into()))));
            }
            if let Some((reason, message)) = this.session.closed() {
                // Closed by bad client input (a hub close comes as a
                // WebSocket close through the sink): say why, then end.
                if !this.close_sent {
                    let frame = Message::Close(Some(CloseFrame {
                        code: close_code(*reason).into(),
                        reason: message.clone().into(),
                    }));
                    if let Err(e) = ready!(this.drain(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    let _ = Pin::new(&mut this.inner).start_send(frame);
                    this.close_sent = true;
                }
                let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Err(e) = this.session.handle_client(&bytes, Instant::now()) {
                        tracing::debug!(target: LOG, room = this.session.room(), error = %e, "closing a Yjs connection");
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = this.session.handle_client(text.as_bytes(), Instant::now());
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl<S, E> Sink<Message> for YjsSocket<S>
where
    S: Sink<Message, Error = E> + Unpin,
{
    type Error = E;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.get_mut().drain(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), E> {
        let this = self.get_mut();
        match item {
            Message::Binary(frame) => {
                if let Err(e) = this.session.handle_server(&frame, Instant::now()) {
                    tracing::warn!(target: LOG, room = this.session.room(), error = %e, "untranslatable hub frame");
                }
                Ok(())
            }
            other => Pin::new(&mut this.inner).start_send(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_and_token_are_percent_decoded_from_the_url() {
        let options = ServerOptions {
            yjs_path: Some("/yjs/".into()),
            ..ServerOptions::default()
        };
        let t = yjs_target(&options, "/yjs/my%20room%2Fa", Some("x=1&token=a%2Bb%zz")).unwrap();
        assert_eq!(t.room, "my room/a");
        assert_eq!(t.token, b"a+b%zz");
        assert!(yjs_target(&options, "/yjs/", None).is_none());
        assert!(yjs_target(&options, "/other/room", None).is_none());
        // A room that is not UTF-8 once decoded is refused.
        assert!(yjs_target(&options, "/yjs/%ff", None).is_none());
    }
}
