//! The client's request stream, followed message by message beside hyper, for the one thing
//! hyper's parser hides from the service: a request carrying both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! hyper handles such a request as RFC 9112 §6.3 allows: it frames the body by
//! `Transfer-Encoding`, removes `Content-Length` from the headers and closes the connection after
//! answering. Nothing is smuggled, but the service cannot tell the request from a plain chunked
//! one, so it cannot refuse it, which §6.1 allows and a proxy should prefer: such a message is a
//! smuggling attempt or a broken client. [`Watched`] hands hyper the connection's bytes and feeds
//! each read to a [`Framing`], which finds each request head with httparse (hyper's parser, with
//! the same defaults) and skips each body by hyper's framing rules, so it knows which request on
//! the connection carried both; the service counts its requests and asks [`BothLengths`].
//!
//! Where it cannot follow (a head or a body hyper refuses, an upgrade, after which the bytes are
//! no longer HTTP) it stops judging for the rest of the connection: a request it misses gets
//! hyper's handling, which is safe, only not a refusal.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which request on a connection carried both lengths (1 is the first, 0 means none so far):
/// written by [`Watched`] as it reads, read by the service.
#[derive(Debug, Default)]
pub struct BothLengths(AtomicU64);

impl BothLengths {
    /// The `nth` request on the connection (counting from 1) carried both lengths. Relaxed is
    /// enough: hyper calls the service in the connection's own task, after the read that
    /// completed the head, so the answer is written before the question.
    pub fn is(&self, nth: u64) -> bool {
        nth != 0 && self.0.load(Ordering::Relaxed) == nth
    }
}

/// A client connection read through a [`Framing`], noting in [`BothLengths`] which request carried
/// both lengths. Writes pass straight through.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    framing: Framing,
    both: Arc<BothLengths>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, framing: Framing, both: Arc<BothLengths>) -> Self {
        Self { inner, framing, both }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(nth) = this.framing.feed(&buf.filled()[before..]) {
            this.both.0.store(nth, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Follows one connection's request stream (see the module documentation).
#[derive(Debug)]
pub struct Framing {
    at: At,
    /// The head read so far; its allocation is reused from one request to the next.
    head: Vec<u8>,
    /// Heads read so far, so the number of the request being read.
    heads: u64,
    max_head_bytes: usize,
    max_headers: usize,
}

/// Header slots kept on the stack when judging a head.
const STACK_HEADERS: usize = 128;

/// Where in the request stream the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// In a request head, or the empty lines before one.
    Head,
    /// In a body of known length, with this many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Stopped judging for the rest of the connection.
    Lost,
}

impl Framing {
    /// With the limits hyper is given (`max_header_size`, `max_headers`): a head beyond them is
    /// hyper's to refuse, and this stops there.
    pub fn new(max_head_bytes: usize, max_headers: usize) -> Self {
        Self { at: At::Head, head: Vec::new(), heads: 0, max_head_bytes, max_headers }
    }

    /// Follow the next bytes of the stream. Returns the number of the request (counting from 1)
    /// whose head these bytes completed, if it carried both lengths.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            match self.at {
                At::Head => {
                    let (rest, both) = self.read_head(bytes);
                    if both.is_some() {
                        return both;
                    }
                    bytes = rest;
                }
                At::Length(left) => {
                    let (left, rest) = skip(left, bytes);
                    self.at = if left == 0 { At::Head } else { At::Length(left) };
                    bytes = rest;
                }
                At::Chunked(Chunk::Data(left)) => {
                    let (left, rest) = skip(left, bytes);
                    self.at = At::Chunked(if left == 0 { Chunk::DataCr } else { Chunk::Data(left) });
                    bytes = rest;
                }
                At::Chunked(chunk) => {
                    self.at = chunk.step(bytes[0]);
                    bytes = &bytes[1..];
                }
                At::Lost => return None,
            }
        }
        None
    }

    /// Read head bytes. Returns what follows the head if it ended in `bytes` (nothing
    /// otherwise), and the request's number if it carried both lengths.
    fn read_head<'a>(&mut self, mut bytes: &'a [u8]) -> (&'a [u8], Option<u64>) {
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 §2.2), as httparse does.
            bytes = &bytes[bytes.iter().take_while(|&&b| b == b'\r' || b == b'\n').count()..];
        }
        let end = head_end(&self.head, bytes);
        // However the reads split the head, one over the limit is lost.
        if self.head.len() + end.unwrap_or(bytes.len()) > self.max_head_bytes {
            self.lose();
            return (&[], None);
        }
        let Some(end) = end else {
            self.head.extend_from_slice(bytes);
            return (&[], None);
        };
        // A head that came in one read (the usual case) is judged where it lies, uncopied.
        if self.head.is_empty() {
            return (&bytes[end..], self.judge_head(&bytes[..end]));
        }
        self.head.extend_from_slice(&bytes[..end]);
        let head = std::mem::take(&mut self.head);
        let both = self.judge_head(&head);
        if !matches!(self.at, At::Lost) {
            // Keep the allocation for the next split head.
            self.head = head;
            self.head.clear();
        }
        (&bytes[end..], both)
    }

    /// The head is complete: count it and set where its body ends.
    fn judge_head(&mut self, head: &[u8]) -> Option<u64> {
        let body = if !may_frame_a_body(head) {
            // Most heads (a GET, a HEAD) name no field that frames a body: no parse needed.
            // One httparse would refuse is refused by hyper too, which then closes.
            Body::Length(0)
        } else {
            // On the stack for hyper's default limit (100): no allocation per request.
            let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
            let mut on_heap = Vec::new();
            let fields = if self.max_headers <= STACK_HEADERS {
                &mut on_stack[..self.max_headers]
            } else {
                on_heap.resize(self.max_headers, httparse::EMPTY_HEADER);
                &mut on_heap[..]
            };
            let mut req = httparse::Request::new(fields);
            match req.parse(head) {
                Ok(httparse::Status::Complete(len)) if len == head.len() => Body::of(&req),
                // hyper refuses what httparse refuses, and closes.
                _ => Body::Unknown,
            }
        };
        self.heads += 1;
        match body {
            Body::Length(0) => self.at = At::Head,
            Body::Length(n) => self.at = At::Length(n),
            Body::Chunked => self.at = At::Chunked(Chunk::Start),
            Body::Both => {
                // hyper closes the connection after this request: nothing further to judge.
                self.lose();
                return Some(self.heads);
            }
            Body::Unknown => self.lose(),
        }
        None
    }

    fn lose(&mut self) {
        self.at = At::Lost;
        self.head = Vec::new();
    }
}

/// The fields [`Body::of`] reads: a head whose lines start with none of them, and that is no
/// CONNECT, has no body.
const FRAMING_FIELDS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];

/// Whether `head` may have a body or hand the connection over: it is a CONNECT, or a line of
/// it starts with one of [`FRAMING_FIELDS`] in any case. A field name starts its line (httparse
/// refuses obs-fold and whitespace before a name), so a "no" is certain; a "yes" only costs the
/// parse. About a tenth of the instructions of parsing the head (callgrind).
fn may_frame_a_body(head: &[u8]) -> bool {
    head.starts_with(b"CONNECT")
        || head.iter().enumerate().filter(|&(_, &b)| b == b'\n').any(|(i, _)| {
            let line = &head[i + 1..];
            FRAMING_FIELDS.iter().any(|name| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
        })
}

/// Skip up to `left` bytes of a body: what is left of it, and the bytes after.
fn skip(left: u64, bytes: &[u8]) -> (u64, &[u8]) {
    let n = left.min(bytes.len() as u64);
    (left - n, &bytes[n as usize..])
}

/// Where the head ends in `bytes` (the index after its empty line), given the head bytes read
/// before: at the first empty line, ended by CRLF or a bare LF as httparse accepts.
fn head_end(before: &[u8], bytes: &[u8]) -> Option<usize> {
    let at = |i: usize| if i < before.len() { before[i] } else { bytes[i - before.len()] };
    let ends_a_head = |i: usize| i >= 1 && (at(i - 1) == b'\n' || (i >= 2 && at(i - 1) == b'\r' && at(i - 2) == b'\n'));
    let newlines = bytes.iter().enumerate().filter(|&(_, &b)| b == b'\n').map(|(i, _)| before.len() + i);
    newlines.filter(|&i| ends_a_head(i)).map(|i| i + 1 - before.len()).next()
}

/// How hyper frames a request's body (RFC 9112 §6.3, as hyper's `Server::parse` applies it).
#[derive(Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Both,
    /// hyper refuses the request, or what follows it may not be HTTP (an upgrade).
    Unknown,
}

impl Body {
    fn of(req: &httparse::Request<'_, '_>) -> Self {
        let mut upgrade = req.method == Some("CONNECT");
        // Some(whether chunked is the last coding) once a Transfer-Encoding line is seen: hyper
        // goes by the last line.
        let mut chunked = None;
        // Some(None) once a Content-Length is invalid or differs from an earlier one.
        let mut length: Option<Option<u64>> = None;
        for field in req.headers.iter() {
            if field.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = Some(last_coding_is_chunked(field.value));
            } else if field.name.eq_ignore_ascii_case("content-length") {
                let this = digits(field.value);
                length = Some(match length {
                    None => this,
                    Some(before) => before.filter(|&n| this == Some(n)),
                });
            } else if field.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        match (chunked, length) {
            (Some(_), Some(_)) => Self::Both,
            // Whether the app accepts the upgrade is not known here.
            _ if upgrade => Self::Unknown,
            // hyper refuses Transfer-Encoding in HTTP/1.0, and codings other than chunked last.
            (Some(true), None) if req.version == Some(1) => Self::Chunked,
            (Some(_), None) => Self::Unknown,
            (None, Some(Some(n))) => Self::Length(n),
            (None, Some(None)) => Self::Unknown,
            (None, None) => Self::Length(0),
        }
    }
}

/// Whether `chunked` is the last coding of a `Transfer-Encoding` value, as hyper decides (hyper
/// also refuses a value that is not visible ASCII; it then closes, so being laxer is harmless).
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Length` value as hyper reads it: digits only (no sign, no list), no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Where in a chunked body (RFC 9112 §7.1), state for state as hyper's decoder
/// (`proto::h1::decode::ChunkedState`), so that both agree where the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first digit of a chunk size.
    Start,
    /// The size so far, more digits may follow.
    Size(u64),
    /// Whitespace after the size.
    SizeSpace(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The LF ending a size line.
    SizeLf(u64),
    /// Chunk data, with this many bytes left.
    Data(u64),
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk's size line or after a trailer line: CR starts the final CRLF,
    /// anything else a trailer line.
    EndCr,
    /// A trailer line, up to CR.
    Trailer,
    TrailerLf,
    /// The LF of the final CRLF.
    EndLf,
}

impl Chunk {
    /// Where byte `b` leads (never called in `Data`, which [`Framing::feed`] skips in bulk).
    fn step(self, b: u8) -> At {
        use Chunk::*;
        let next = match (self, b) {
            (Start, _) => match hex(b) {
                Some(d) => Size(d),
                None => return At::Lost,
            },
            (Size(n) | SizeSpace(n), b' ' | b'\t') => SizeSpace(n),
            (Size(n) | SizeSpace(n), b';') => Extension(n),
            (Size(n) | SizeSpace(n) | Extension(n), b'\r') => SizeLf(n),
            (Size(n), _) => match hex(b).and_then(|d| n.checked_mul(16)?.checked_add(d)) {
                Some(n) => Size(n),
                None => return At::Lost,
            },
            (Extension(n), _) if b != b'\n' => Extension(n),
            (SizeLf(0), b'\n') => EndCr,
            (SizeLf(n), b'\n') => Data(n),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (EndCr | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => return At::Head,
            // hyper refuses the body here, and closes.
            _ => return At::Lost,
        };
        At::Chunked(next)
    }
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request with both lengths in `stream`, checked to be the same however reads split it.
    fn both_in(stream: &[u8]) -> Option<u64> {
        let whole = Framing::new(1024, 16).feed(stream);
        let mut bytewise = Framing::new(1024, 16);
        assert_eq!(stream.chunks(1).find_map(|b| bytewise.feed(b)), whole, "byte by byte");
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut framing = Framing::new(1024, 16);
            assert_eq!(framing.feed(a).or_else(|| framing.feed(b)), whole, "cut at {cut}");
        }
        whole
    }

    const BOTH: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn a_head_with_both_lengths_is_found_whichever_comes_first() {
        assert_eq!(both_in(BOTH), Some(1));
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 0\r\nHost: x\r\n\r\n0\r\n\r\n";
        assert_eq!(both_in(te_first), Some(1));
        // Invalid or non-chunked values too: hyper refuses those itself, the count is still right.
        assert_eq!(both_in(b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(1));
        assert_eq!(both_in(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }

    #[test]
    fn requests_are_counted_across_bodies_of_every_framing() {
        let stream = [
            // Empty lines before a request are ignored, and bare LF ends lines as for httparse.
            &b"\r\n\nGET / HTTP/1.1\nHost: x\n\n"[..],
            // A body that looks like a head with both lengths.
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\nContent-Length: 65\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Chunks with sizes in either case, whitespace, extensions, data that looks like a
            // head, and trailers.
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"1A ; ext=\"v\"\r\nGET / HTTP/1.1\r\n\r\nPOST / H\r\n",
            b"a\r\n00\r\n\r\n\r\n\r\n\r\n0\r\nX-Trailer: 1\r\nContent-Length: 1\r\n\r\n",
            BOTH,
        ]
        .concat();
        assert_eq!(both_in(&stream), Some(4));
    }

    #[test]
    fn it_stops_at_an_upgrade_and_where_hyper_refuses() {
        let after = |first: &[u8]| both_in(&[first, BOTH].concat());
        assert_eq!(after(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), None);
        assert_eq!(after(b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n"), None);
        assert_eq!(after(b"POST / HTTP/1.1\r\nX A: 1\r\nContent-Length: 0\r\n\r\n"), None, "a head hyper refuses");
        assert_eq!(after(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), None, "HTTP/1.0");
        assert_eq!(after(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"), None);
        assert_eq!(after(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n"), None, "bad size");
        assert_eq!(after(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n"), None, "LF in extension");
        assert_eq!(after(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy"), None, "no CRLF after data");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(after(huge.as_bytes()), None, "a head over the limit");
        // The same requests without the trouble are followed.
        assert_eq!(after(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\r\nx\r\n0\r\n\r\n"), Some(2));
    }

    #[test]
    fn a_head_naming_no_framing_field_has_no_body_without_a_parse() {
        let plain: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
            b"GET /content-length?upgrade HTTP/1.1\r\nX-Note: transfer-encoding\r\n\r\n",
            b"HEAD / HTTP/1.0\nConnection: keep-alive\n\n",
        ];
        for head in plain {
            assert!(!may_frame_a_body(head), "{}", String::from_utf8_lossy(head));
            let mut fields = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut fields);
            assert!(req.parse(head).unwrap().is_complete());
            assert_eq!(Body::of(&req), Body::Length(0), "the parse agrees");
        }
        let framing: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n",
        ];
        for head in framing {
            assert!(may_frame_a_body(head), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn what_follows_a_refused_head_is_never_served_so_judging_it_is_harmless() {
        // hyper answers 400 to this head and closes: the request after it is never read, so
        // whether it was judged (here it is: no framing field, no parse) does not matter.
        let stream = [&b"GET / HTTP/1.1\r\nX A: 1\r\n\r\n"[..], BOTH].concat();
        assert_eq!(both_in(&stream), Some(2));
    }
}
