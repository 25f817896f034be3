//! Splicing an upgraded client stream to the app's upgraded stream.
//!
//! Bytes are copied both ways as they come; EOF on one side becomes a write shutdown (half-close)
//! on the other, so either side can finish first. Idle streams hold no buffers: reads go into a
//! per-thread scratch buffer and only bytes a slow writer could not take are copied into a
//! per-direction buffer, so 1,000 idle WebSockets cost little more than their sockets.
//!
//! For WebSockets the copy follows frame boundaries (headers only; payloads are skipped by
//! length), so on shutdown the sidecar can stop both directions between frames and speak a
//! proper close handshake (1001 Going Away) to both peers instead of cutting TCP.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

const SCRATCH: usize = 32 * 1024;
/// A direction's leftover buffer is freed after draining if it grew beyond this.
const KEEP_BUFFER: usize = 64 * 1024;
/// Close code 1001 "going away", big-endian.
const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Follows WebSocket frame boundaries in a byte stream (RFC 6455 §5.2) without buffering.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    have: usize,
    need: usize,
    remaining: u64,
    /// A close frame's header has been seen.
    pub saw_close: bool,
}

impl FrameTracker {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Account for `data`; returns how many bytes belong before the first frame boundary when
    /// `stop` is set (all of them otherwise).
    pub fn feed(&mut self, data: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - i) as u64);
                self.remaining -= take;
                i += take as usize;
                continue;
            }
            if stop && self.have == 0 {
                return i;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                let len7 = self.header[1] & 0x7f;
                let ext = match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let len = match self.header[1] & 0x7f {
                    126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                    127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
                    n => n as u64,
                };
                if self.header[0] & 0x0f == 0x8 {
                    self.saw_close = true;
                }
                self.remaining = len;
                self.have = 0;
            }
        }
        i
    }
}

/// One direction of the splice.
#[derive(Debug, Default)]
struct Half {
    pending: Vec<u8>,
    pos: usize,
    read_eof: bool,
    /// Write side shut down after the reader's EOF.
    shut: bool,
    /// Stopped at a frame boundary for shutdown.
    stopped: bool,
    frames: Option<FrameTracker>,
}

enum Step {
    Eof,
    Read,
}

impl Half {
    fn done(&self) -> bool {
        self.shut || self.stopped
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W, stop: bool) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.pos < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
            }
            if !self.pending.is_empty() {
                self.pos = 0;
                if self.pending.capacity() > KEEP_BUFFER {
                    self.pending = Vec::new();
                } else {
                    self.pending.clear();
                }
            }
            if self.done() {
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.shut = true;
                return Poll::Ready(Ok(()));
            }
            if stop && self.frames.as_ref().is_none_or(FrameTracker::at_boundary) {
                self.stopped = true;
                return Poll::Ready(Ok(()));
            }
            let step = ready!(SCRATCH_BUF.with(|scratch| -> Poll<io::Result<Step>> {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
                let mut data = buf.filled();
                if data.is_empty() {
                    return Poll::Ready(Ok(Step::Eof));
                }
                if let Some(frames) = &mut self.frames {
                    let keep = frames.feed(data, stop);
                    if keep < data.len() {
                        // Bytes past the boundary are the start of a frame we will not deliver:
                        // the peer is about to get a close frame instead.
                        self.stopped = true;
                        data = &data[..keep];
                    }
                }
                while !data.is_empty() {
                    match Pin::new(&mut *w).poll_write(cx, data) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => data = &data[n..],
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pending.extend_from_slice(data);
                            break;
                        }
                    }
                }
                Poll::Ready(Ok(Step::Read))
            }))?;
            match step {
                Step::Eof => self.read_eof = true,
                Step::Read => {}
            }
        }
    }
}

/// Both directions of one upgraded connection.
struct Splice<C, A> {
    client: C,
    app: A,
    to_app: Half,
    to_client: Half,
    /// After one side ended, how long the other may go on (None: as long as it likes).
    linger: Option<Duration>,
    linger_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C, A> Splice<C, A>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_run(&mut self, cx: &mut Context<'_>, stop: bool) -> Poll<io::Result<()>> {
        let to_app = self.to_app.poll(cx, &mut self.client, &mut self.app, stop)?;
        let to_client = self.to_client.poll(cx, &mut self.app, &mut self.client, stop)?;
        if to_app.is_ready() && to_client.is_ready() {
            return Poll::Ready(Ok(()));
        }
        if let Some(linger) = self.linger
            && !stop
            && (to_app.is_ready() || to_client.is_ready())
        {
            let timer = self.linger_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }
}

/// Tuning of [`run`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Follow WebSocket frames so shutdown can send close frames.
    pub websocket: bool,
    /// How long shutdown waits to reach a frame boundary and then for the peers' close replies.
    pub close_timeout: Duration,
}

/// Copy between `client` and `app` until both directions end (for WebSockets: until one ends,
/// plus `close_timeout`), an error occurs, or `shutdown` fires (then close properly, bounded by
/// `close_timeout`).
pub async fn run<C, A>(client: C, app: A, opts: Options, shutdown: CancellationToken) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let frames = opts.websocket.then(FrameTracker::default);
    let mut s = Splice {
        client,
        app,
        to_app: Half { frames: frames.clone(), ..Half::default() },
        to_client: Half { frames, ..Half::default() },
        // WebSocket has no half-close: once one side's TCP ended (a crashed app, a vanished
        // client, or the end of a close handshake), the other gets the close timeout to finish
        // and is then cut, so a peer that never closes cannot keep the backend counted as busy.
        linger: opts.websocket.then_some(opts.close_timeout),
        linger_timer: None,
    };
    tokio::select! {
        r = poll_fn(|cx| s.poll_run(cx, false)) => return r,
        () = shutdown.cancelled() => {}
    }
    let bound = opts.close_timeout;
    let reached = tokio::time::timeout(bound, poll_fn(|cx| s.poll_run(cx, true))).await;
    if opts.websocket && matches!(reached, Ok(Ok(()))) {
        let _ = tokio::time::timeout(bound, close_websocket(&mut s)).await;
    }
    let _ = tokio::time::timeout(bound, async {
        let _ = s.client.shutdown().await;
        let _ = s.app.shutdown().await;
    })
    .await;
    Ok(())
}

/// Send 1001 to whichever peer can still be written to, then read (and drop) until that peer's
/// close reply or EOF, so each peer completes its close handshake.
async fn close_websocket<C, A>(s: &mut Splice<C, A>) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let Splice { client, app, to_app, to_client, .. } = s;
    let to_client_open = to_client.stopped;
    let to_app_open = to_app.stopped;
    let close_client = async {
        if to_client_open {
            // Server-to-client frames are unmasked.
            client.write_all(&[0x88, 0x02, GOING_AWAY[0], GOING_AWAY[1]]).await?;
            if !to_app.read_eof {
                drain_until_close(client, to_app.frames.as_mut().expect("websocket")).await?;
            }
        }
        io::Result::Ok(())
    };
    let close_app = async {
        if to_app_open {
            // Client-to-server frames must be masked (RFC 6455 §5.3).
            let key: [u8; 4] = rand::random();
            let frame = [0x88, 0x82, key[0], key[1], key[2], key[3], GOING_AWAY[0] ^ key[0], GOING_AWAY[1] ^ key[1]];
            app.write_all(&frame).await?;
            if !to_client.read_eof {
                drain_until_close(app, to_client.frames.as_mut().expect("websocket")).await?;
            }
        }
        io::Result::Ok(())
    };
    let (a, b) = tokio::join!(close_client, close_app);
    a.and(b)
}

async fn drain_until_close<S: AsyncRead + Unpin>(stream: &mut S, frames: &mut FrameTracker) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    while !frames.saw_close {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        frames.feed(&buf[..n], false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frame_boundaries_are_found_across_arbitrary_chunking() {
        let mut stream = frame(0x1, true, 5);
        stream.extend(frame(0x2, false, 300));
        stream.extend(frame(0x2, true, 70_000));
        stream.extend(frame(0x8, true, 2));
        for chunk in [1, 2, 3, 7, 100, 4096] {
            let mut t = FrameTracker::default();
            for c in stream.chunks(chunk) {
                assert_eq!(t.feed(c, false), c.len());
            }
            assert!(t.at_boundary(), "chunk {chunk}");
            assert!(t.saw_close);
        }
    }

    #[test]
    fn stopping_keeps_the_rest_of_the_current_frame_only() {
        let first = frame(0x1, false, 10);
        let mut stream = first.clone();
        stream.extend(frame(0x1, false, 10));
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&stream[..4], false), 4);
        assert_eq!(t.feed(&stream[4..], true), first.len() - 4);
        assert!(t.at_boundary());
        assert!(!t.saw_close);
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (mut client, client_side) = tokio::io::duplex(64);
        let (app_side, mut app) = tokio::io::duplex(64);
        let opts = Options { websocket: false, close_timeout: Duration::from_secs(1) };
        let task = tokio::spawn(run(client_side, app_side, opts, CancellationToken::new()));
        let big = vec![42u8; 100_000];
        let writer = {
            let big = big.clone();
            tokio::spawn(async move {
                client.write_all(&big).await.unwrap();
                client.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                back
            })
        };
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        app.write_all(b"bye").await.unwrap();
        app.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        task.await.unwrap().unwrap();
    }
}
