//! A server WebSocket that lets go of its WebSocket state while idle.
//!
//! Most connections of a collaboration server are idle most of the time (an
//! open tab nobody types in). tungstenite keeps, per connection, a read
//! buffer (512 bytes here, and as large as the largest frame it has read),
//! a write buffer as large as the largest frame it has written, and
//! tokio-tungstenite two waker proxies: about a kilobyte per idle
//! connection, more after a large message. [`HibernatingWebSocket`] keeps
//! only the TCP stream while nothing is being read or written and rebuilds
//! the WebSocket (a few allocations) when the socket becomes readable or a
//! frame is to be written.
//!
//! Dropping tungstenite's state is safe only between frames: its read
//! buffer must be empty and no fragmented message half-read. The stream is
//! read through [`Watched`], which follows the frame boundaries of the bytes
//! it hands to tungstenite ([`FrameTracker`], parsing headers with
//! tungstenite's own [`FrameHeader`]). During the HTTP upgrade it reads no
//! byte past the request (it peeks first), so the WebSocket starts with an
//! empty buffer even when a client sends its first frame right behind the
//! request.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// The server's WebSocket settings for messages of up to `max_message`
/// bytes. Writes are not buffered: the connection task flushes each batch.
pub(crate) fn server_ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(super::WS_SERVER_READ_BUFFER)
        .write_buffer_size(0)
}

/// An upgraded server WebSocket over TCP that holds only its stream while
/// idle (see the [module docs](self)). A `Stream` of messages and a `Sink`,
/// like the `WebSocketStream` it wraps.
pub(crate) struct HibernatingWebSocket {
    state: State,
    /// For [`server_ws_config`] when waking.
    max_message: usize,
}

enum State {
    /// Between frames, nothing to write: the TCP stream alone.
    Asleep(TcpStream),
    Awake(Box<WebSocketStream<Watched>>),
    /// Rebuilding the WebSocket failed; the connection is over.
    Broken,
}

impl HibernatingWebSocket {
    /// Wraps a WebSocket upgraded over [`Watched::upgrading`]; it goes to
    /// sleep the first time it has nothing to read.
    pub(crate) fn new(ws: WebSocketStream<Watched>, max_message: usize) -> Self {
        HibernatingWebSocket {
            state: State::Awake(Box::new(ws)),
            max_message,
        }
    }

    /// Whether it holds its TCP stream alone right now.
    #[cfg(test)]
    pub(crate) fn is_asleep(&self) -> bool {
        matches!(self.state, State::Asleep(_))
    }

    /// The WebSocket, rebuilt if asleep.
    fn awake(&mut self) -> Result<&mut WebSocketStream<Watched>, tungstenite::Error> {
        if matches!(self.state, State::Asleep(_))
            && let State::Asleep(tcp) = std::mem::replace(&mut self.state, State::Broken)
            && let Some(ws) = rebuild(tcp, self.max_message)
        {
            self.state = State::Awake(Box::new(ws));
        }
        match &mut self.state {
            State::Awake(ws) => Ok(ws),
            _ => Err(tungstenite::Error::Io(io::Error::other(
                "could not rebuild the WebSocket",
            ))),
        }
    }

    /// Puts the WebSocket to sleep if it is between frames and has written
    /// everything (a pong, say). `true` if it is asleep now.
    fn try_sleep(&mut self, cx: &mut Context<'_>) -> bool {
        let State::Awake(ws) = &mut self.state else {
            return false;
        };
        if !ws.get_ref().frames.between_messages() {
            return false;
        }
        if !matches!(Pin::new(&mut **ws).poll_flush(cx), Poll::Ready(Ok(()))) {
            return false;
        }
        if let State::Awake(ws) = std::mem::replace(&mut self.state, State::Broken) {
            self.state = State::Asleep(ws.into_inner().tcp);
        }
        true
    }
}

/// A WebSocket over `tcp` with an empty buffer (tokio-tungstenite's
/// constructor is an `async fn` that finishes when first polled).
fn rebuild(tcp: TcpStream, max_message: usize) -> Option<WebSocketStream<Watched>> {
    use futures_util::FutureExt;
    let watched = Watched {
        tcp,
        frames: FrameTracker::default(),
        request: None,
    };
    WebSocketStream::from_raw_socket(watched, Role::Server, Some(server_ws_config(max_message)))
        .now_or_never()
}

impl Stream for HibernatingWebSocket {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Asleep(tcp) => {
                    if let Err(e) = ready!(tcp.poll_read_ready(cx)) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if let Err(e) = this.awake() {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                State::Awake(ws) => {
                    let next = Pin::new(&mut **ws).poll_next(cx);
                    // Asleep, it waits for readability itself (the next turn
                    // registers the waker; the read that just blocked cleared
                    // the readiness, so it does not spin).
                    if next.is_pending() && this.try_sleep(cx) {
                        continue;
                    }
                    return next;
                }
                State::Broken => return Poll::Ready(None),
            }
        }
    }
}

impl Sink<Message> for HibernatingWebSocket {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(self.get_mut().awake()?).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(self.get_mut().awake()?).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.get_mut().state {
            State::Awake(ws) => Pin::new(&mut **ws).poll_flush(cx),
            // Nothing is buffered while asleep.
            State::Asleep(_) => Poll::Ready(Ok(())),
            State::Broken => Poll::Ready(Err(tungstenite::Error::AlreadyClosed)),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(self.get_mut().awake()?).poll_close(cx)
    }
}

/// The TCP stream as tungstenite reads it: during the upgrade, no byte
/// past the HTTP request; after it, every byte through a [`FrameTracker`].
pub(crate) struct Watched {
    tcp: TcpStream,
    frames: FrameTracker,
    /// During the upgrade: how much of the request's final `\r\n\r\n` the
    /// bytes read so far end with.
    request: Option<u8>,
}

impl Watched {
    /// `tcp` before the HTTP upgrade.
    pub(crate) fn upgrading(tcp: TcpStream) -> Self {
        Watched {
            tcp,
            frames: FrameTracker::default(),
            request: Some(0),
        }
    }

    /// The upgrade: reads up to the end of the request and no further,
    /// peeking first.
    fn poll_read_request(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        matched: u8,
    ) -> Poll<io::Result<()>> {
        let mut peeked = ReadBuf::new(buf.initialize_unfilled());
        ready!(self.tcp.poll_peek(cx, &mut peeked))?;
        let take = match request_end(matched, peeked.filled()) {
            (_, Some(end)) => end,
            (_, None) => peeked.filled().len(),
        };
        if take == 0 {
            return Poll::Ready(Ok(())); // end of stream
        }
        // The peeked bytes are in the socket's buffer: this read returns
        // them (the same bytes, read into the same place).
        let mut exact = ReadBuf::new(&mut buf.initialize_unfilled()[..take]);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut exact))?;
        let (matched, end) = request_end(matched, exact.filled());
        self.request = if end.is_some() { None } else { Some(matched) };
        let n = exact.filled().len();
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Follows the end of an HTTP request (`\r\n\r\n`) through `bytes`, of
/// which `matched` bytes were seen at the end of the bytes before: how
/// many match at the end of `bytes`, and where the request ends in them.
fn request_end(matched: u8, bytes: &[u8]) -> (u8, Option<usize>) {
    const END: &[u8; 4] = b"\r\n\r\n";
    let mut m = matched as usize;
    for (i, &b) in bytes.iter().enumerate() {
        m = if b == END[m] {
            m + 1
        } else if b == END[0] {
            1
        } else {
            0
        };
        if m == END.len() {
            return (m as u8, Some(i + 1));
        }
    }
    (m as u8, None)
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(matched) = this.request {
            return this.poll_read_request(cx, buf, matched);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        this.frames.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The longest WebSocket frame header: 2 bytes, a 64-bit length, a mask.
const MAX_HEADER: usize = 14;

/// Follows WebSocket frame boundaries in a byte stream (the client's
/// frames, as read): whether everything read so far is whole messages.
#[derive(Default)]
struct FrameTracker {
    /// The start of a header split across reads.
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// Payload bytes of the current frame not read yet.
    payload_left: u64,
    /// A data frame without FIN was read: a fragmented message is open.
    in_message: bool,
    /// A header did not parse: tungstenite fails the connection; it never
    /// sleeps.
    broken: bool,
}

impl FrameTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let had = self.head_len as usize;
            let add = (self.head.len() - had).min(bytes.len());
            self.head[had..had + add].copy_from_slice(&bytes[..add]);
            let mut cursor = Cursor::new(&self.head[..had + add]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    // The header ends in the bytes just added (a shorter
                    // one would have parsed before).
                    let Some(used) = (cursor.position() as usize)
                        .checked_sub(had)
                        .filter(|&used| used <= add)
                    else {
                        self.broken = true;
                        continue;
                    };
                    bytes = &bytes[used..];
                    self.head_len = 0;
                    self.payload_left = len;
                    if let OpCode::Data(_) = header.opcode {
                        self.in_message = !header.is_final;
                    }
                }
                // Fourteen bytes always hold a header.
                Ok(None) if add == 0 => self.broken = true,
                Ok(None) => {
                    self.head_len = (had + add) as u8;
                    bytes = &bytes[add..];
                }
                Err(_) => self.broken = true,
            }
        }
    }

    /// Every byte read so far belongs to whole messages.
    fn between_messages(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && !self.in_message && !self.broken
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

    use super::*;

    /// A client frame as it goes on the wire (masked).
    fn client_frame(opcode: OpCode, payload: &[u8], fin: bool) -> Vec<u8> {
        masked(Frame::message(payload.to_vec(), opcode, fin))
    }

    fn ping(payload: &[u8]) -> Vec<u8> {
        masked(Frame::ping(payload.to_vec()))
    }

    fn masked(mut frame: Frame) -> Vec<u8> {
        frame.header_mut().mask = Some([0x1f, 0x2e, 0x3d, 0x4c]);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    fn binary(payload: &[u8], fin: bool) -> Vec<u8> {
        client_frame(OpCode::Data(Data::Binary), payload, fin)
    }

    fn continuation(payload: &[u8], fin: bool) -> Vec<u8> {
        client_frame(OpCode::Data(Data::Continue), payload, fin)
    }

    /// Frames of every header length (7-, 16- and 64-bit lengths), data and
    /// control, fragmented messages with a ping inside: the tracker knows
    /// after every read, however the stream is cut, whether it ends between
    /// messages.
    fn frames() -> impl Strategy<Value = Vec<(u8, usize, bool)>> {
        // (kind: 0 = whole binary, 1 = fragmented in 2..4 pieces, 2 = ping;
        // payload length; nothing).
        let len = prop_oneof![0usize..130, 120usize..300, 65_530usize..65_545];
        prop::collection::vec((0u8..3, len, any::<bool>()), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn the_tracker_finds_message_ends_in_any_cut(
            plan in frames(),
            cuts in prop::collection::vec(1usize..400, 1..64),
        ) {
            // The wire bytes and, for every frame end, whether a message is
            // open there.
            let mut wire = Vec::new();
            let mut ends = vec![(0usize, false)];
            for (kind, len, _) in plan {
                let payload = vec![7u8; len];
                match kind {
                    0 => {
                        wire.extend(binary(&payload, true));
                        ends.push((wire.len(), false));
                    }
                    1 => {
                        wire.extend(binary(&payload[..len / 2], false));
                        ends.push((wire.len(), true));
                        // A control frame may sit between fragments.
                        wire.extend(ping(b"p"));
                        ends.push((wire.len(), true));
                        wire.extend(continuation(&payload[len / 2..], true));
                        ends.push((wire.len(), false));
                    }
                    _ => {
                        wire.extend(ping(&payload[..len.min(125)]));
                        ends.push((wire.len(), false));
                    }
                }
            }
            let mut tracker = FrameTracker::default();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < wire.len() {
                let n = (*cut.next().unwrap()).min(wire.len() - at);
                tracker.feed(&wire[at..at + n]);
                at += n;
                let expected = ends.iter().any(|&(end, open)| end == at && !open);
                prop_assert_eq!(tracker.between_messages(), expected, "after {} of {} bytes", at, wire.len());
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_followed_without_panicking(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cut in 1usize..40,
        ) {
            let mut tracker = FrameTracker::default();
            for chunk in bytes.chunks(cut) {
                tracker.feed(chunk);
            }
            prop_assert!(tracker.head_len as usize <= MAX_HEADER);
        }
    }

    #[test]
    fn garbage_keeps_it_awake() {
        let mut tracker = FrameTracker::default();
        // Opcode 3 is reserved: tungstenite fails the connection.
        tracker.feed(&[0x83, 0x80, 1, 2, 3, 4]);
        assert!(!tracker.between_messages());
    }

    #[test]
    fn the_request_end_is_found_across_reads() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nFRAME";
        for cut in 0..request.len() {
            let (m, end) = request_end(0, &request[..cut]);
            let found = match end {
                Some(end) => end,
                None => match request_end(m, &request[cut..]) {
                    (_, Some(end)) => cut + end,
                    (_, None) => panic!("end not found with a cut at {cut}"),
                },
            };
            assert_eq!(found, request.len() - "FRAME".len(), "cut at {cut}");
        }
        // `\r\n\r` then `\r\n\r\n`: the match restarts at the third `\r`.
        assert_eq!(request_end(0, b"a\r\n\r\r\n\r\nb"), (4, Some(8)));
    }

    /// A server WebSocket on a loopback socket, and the raw client socket
    /// after the upgrade request was written with `pipelined` right behind
    /// it (its 101 response read).
    async fn pair(pipelined: &[u8]) -> (HibernatingWebSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        request.extend_from_slice(pipelined);
        client.write_all(&request).await.unwrap();
        let max = 1 << 20;
        let ws = tokio_tungstenite::accept_async_with_config(
            Watched::upgrading(tcp),
            Some(server_ws_config(max)),
        )
        .await
        .unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.unwrap();
            response.push(byte[0]);
        }
        assert!(response.starts_with(b"HTTP/1.1 101"));
        (HibernatingWebSocket::new(ws, max), client)
    }

    /// One poll of the stream, with the test task's waker.
    async fn poll_once(
        ws: &mut HibernatingWebSocket,
    ) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        std::future::poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx))).await
    }

    async fn next_message(ws: &mut HibernatingWebSocket) -> Message {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("open")
            .expect("no error")
    }

    /// Polls until nothing is left to read, then says whether it sleeps.
    async fn settles_asleep(ws: &mut HibernatingWebSocket) -> bool {
        assert!(poll_once(ws).await.is_pending());
        ws.is_asleep()
    }

    /// Polls until the socket has been read (it wakes), or 2 s.
    async fn wakes(ws: &mut HibernatingWebSocket) -> bool {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < until {
            assert!(poll_once(ws).await.is_pending(), "no message expected yet");
            if !ws.is_asleep() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_frame_sent_with_the_upgrade_request_is_read_and_it_sleeps() {
        let (mut ws, _client) = pair(&binary(b"first", true)).await;
        assert_eq!(next_message(&mut ws).await, Message::binary(&b"first"[..]));
        assert!(settles_asleep(&mut ws).await);
    }

    #[tokio::test]
    async fn it_stays_awake_inside_a_frame_and_a_fragmented_message() {
        let (mut ws, mut client) = pair(b"").await;
        assert!(settles_asleep(&mut ws).await);
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let frame = binary(&payload, true);
        // The header in two reads, then the payload in two.
        for piece in [&frame[..1], &frame[1..3], &frame[3..100]] {
            client.write_all(piece).await.unwrap();
            assert!(wakes(&mut ws).await, "woken by a partial frame");
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(poll_once(&mut ws).await.is_pending());
            assert!(!ws.is_asleep(), "asleep in the middle of a frame");
        }
        client.write_all(&frame[100..]).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::binary(payload.clone())
        );
        assert!(settles_asleep(&mut ws).await);

        // A message in two fragments: awake until its last.
        client
            .write_all(&binary(&payload[..10], false))
            .await
            .unwrap();
        assert!(wakes(&mut ws).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(poll_once(&mut ws).await.is_pending());
        assert!(!ws.is_asleep(), "asleep inside a fragmented message");
        client
            .write_all(&continuation(&payload[10..], true))
            .await
            .unwrap();
        assert_eq!(next_message(&mut ws).await, Message::binary(payload));
        assert!(settles_asleep(&mut ws).await);
    }

    #[tokio::test]
    async fn it_answers_pings_and_writes_while_asleep() {
        let (mut ws, mut client) = pair(b"").await;
        assert!(settles_asleep(&mut ws).await);
        client.write_all(&ping(b"hi")).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::Ping(b"hi".to_vec().into())
        );
        // The pong goes out before it sleeps.
        assert!(settles_asleep(&mut ws).await);
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 2, b'h', b'i']);

        // A message written while asleep: it wakes to write it.
        ws.send(Message::binary(&b"from the server"[..]))
            .await
            .unwrap();
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x82, 15]);
        let mut body = [0u8; 15];
        client.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"from the server");
        assert!(settles_asleep(&mut ws).await);

        // A large message, then asleep again (its buffers dropped).
        let large = vec![9u8; 200_000];
        client.write_all(&binary(&large, true)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::binary(large));
        assert!(settles_asleep(&mut ws).await);
    }

    #[tokio::test]
    async fn a_closed_socket_ends_the_stream() {
        let (mut ws, client) = pair(b"").await;
        assert!(settles_asleep(&mut ws).await);
        drop(client);
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("within 5 s");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    }
}
