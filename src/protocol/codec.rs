//! Line framing with a length cap, shared by server and client.
//!
//! A read is not a message: one read may hold part of a line or several
//! lines. A frame is the bytes up to `\n`, with one trailing `\r` removed,
//! however the bytes arrived:
//!
//! ```text
//! frame   = *(any byte except LF) [CR] LF
//! ```
//!
//! A line longer than `max_len` bytes (not counting CR LF) yields one
//! [`Frame::TooLong`] and the rest of it, up to the next `\n`, is thrown away
//! without being buffered. A peer that keeps sending past `discard_limit`
//! bytes without any `\n` gets [`FrameError::Flood`]: it is not speaking a
//! line protocol, and the connection should end.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its terminator. Not yet checked for UTF-8.
    Line(Bytes),
    /// A line over the limit was seen; it has been (or is being) discarded.
    TooLong,
}

/// Why decoding stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// More than the discard limit arrived without a newline.
    #[error("more than {0} bytes without a newline")]
    Flood(usize),
    /// The underlying read failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A newline-delimited decoder with a maximum line length and a bound on how
/// much of an over-long line it is willing to skip.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_len: usize,
    discard_limit: usize,
    /// `Some(n)`: inside an over-long line, `n` bytes of it skipped so far.
    discarding: Option<usize>,
    /// Bytes of the buffer already searched for `\n`, so a line that arrives
    /// in many small reads is scanned once, not once per read.
    scanned: usize,
}

impl LineCodec {
    /// A codec for lines of at most `max_len` bytes, ending the stream once an
    /// over-long line runs past `discard_limit` bytes.
    pub fn new(max_len: usize, discard_limit: usize) -> LineCodec {
        LineCodec {
            max_len,
            discard_limit: discard_limit.max(max_len),
            discarding: None,
            scanned: 0,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(skipped) = self.discarding {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    buf.advance(i + 1);
                    self.discarding = None;
                }
                None => {
                    let skipped = skipped + buf.len();
                    buf.clear();
                    if skipped > self.discard_limit {
                        return Err(FrameError::Flood(self.discard_limit));
                    }
                    self.discarding = Some(skipped);
                    return Ok(None);
                }
            }
        }
        // A valid line is at most max_len bytes, then CR, then LF.
        let window = buf.len().min(self.max_len + 2);
        let found = buf[self.scanned.min(window)..window]
            .iter()
            .position(|&b| b == b'\n');
        if let Some(off) = found {
            let end = self.scanned.min(window) + off;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max_len {
                return Ok(Some(Frame::TooLong));
            }
            return Ok(Some(Frame::Line(line.freeze())));
        }
        if buf.len() >= self.max_len + 2 {
            // The window holds no newline: skip it; the rest of the line is
            // skipped by the `discarding` branch on the next call.
            self.scanned = 0;
            self.discarding = Some(window);
            buf.advance(window);
            return Ok(Some(Frame::TooLong));
        }
        self.scanned = window;
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if self.discarding.is_some() || buf.is_empty() {
            buf.clear();
            return Ok(None);
        }
        // A last line without its newline (`printf 'hi' | nc`) still counts.
        self.scanned = 0;
        let mut line = buf.split();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max_len {
            return Ok(Some(Frame::TooLong));
        }
        Ok(Some(Frame::Line(line.freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(codec: &mut LineCodec, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn crlf_split_and_joined_lines() {
        let mut c = LineCodec::new(100, 1000);
        let frames = feed(&mut c, &[b"he", b"llo\r", b"\nwho\nto|a|", b"b\n\n"]);
        assert_eq!(
            frames,
            vec![line("hello"), line("who"), line("to|a|b"), line("")]
        );
    }

    #[test]
    fn last_line_without_newline_counts_at_eof() {
        let mut c = LineCodec::new(100, 1000);
        assert_eq!(feed(&mut c, &[b"a\nbye"]), vec![line("a"), line("bye")]);
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let mut c = LineCodec::new(4, 1000);
        let frames = feed(&mut c, &[b"1234\n12345", b"678", b"9\nok\n"]);
        assert_eq!(frames, vec![line("1234"), Frame::TooLong, line("ok")]);
        let frames = feed(&mut c, &[b"1234\r\n12345\n"]);
        assert_eq!(frames, vec![line("1234"), Frame::TooLong]);
    }

    #[test]
    fn endless_line_is_a_flood() {
        let mut c = LineCodec::new(4, 16);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        buf.extend_from_slice(b"0123456789");
        assert!(c.decode(&mut buf).is_err());
    }

    /// Each limit at its exact edge (found by mutation testing: these
    /// off-by-ones survived the tests above).
    #[test]
    fn limits_hold_at_their_exact_edges() {
        // A line of exactly max_len counts, also without its newline at EOF,
        // and a CR before the end is not part of it; one byte more does not.
        let mut c = LineCodec::new(4, 1000);
        assert_eq!(feed(&mut c, &[b"1234"]), vec![line("1234")]);
        assert_eq!(feed(&mut c, &[b"ab\r"]), vec![line("ab")]);
        assert_eq!(feed(&mut c, &[b"1234\r"]), vec![line("1234")]);
        assert_eq!(feed(&mut c, &[b"12345"]), vec![Frame::TooLong]);
        // A line of max_len with its CRLF split across reads is a line, not
        // an over-long one.
        let mut c = LineCodec::new(1, 1000);
        assert_eq!(feed(&mut c, &[b"1\r", b"\n"]), vec![line("1")]);
        assert_eq!(feed(&mut c, &[b"1\r\n"]), vec![line("1")]);
    }

    /// The flood limit counts the bytes skipped, and is "more than": an
    /// over-long line of exactly discard_limit skipped bytes is skipped,
    /// one more is a flood.
    #[test]
    fn flood_limit_counts_skipped_bytes_exactly() {
        // max_len 4: the first 6 bytes (max_len + CRLF) are skipped at once.
        let mut c = LineCodec::new(4, 16);
        let mut buf = BytesMut::from(&b"123456"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        buf.extend_from_slice(b"abc"); // 9 skipped
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"defghij"); // 16 skipped: the limit itself
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\nok\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(line("ok")));
        let mut c = LineCodec::new(4, 16);
        let mut buf = BytesMut::from(&b"123456"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        buf.extend_from_slice(b"abcdefghijk"); // 17 skipped
        assert!(matches!(c.decode(&mut buf), Err(FrameError::Flood(16))));
    }

    proptest! {
        /// However the input is cut into reads, the same frames come out, and
        /// no frame is longer than the limit.
        #[test]
        fn chunking_does_not_change_frames(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..200), cut in 1usize..20) {
            let whole = feed(&mut LineCodec::new(8, 10_000), &[&data]);
            let chunks: Vec<&[u8]> = data.chunks(cut).collect();
            let pieces = feed(&mut LineCodec::new(8, 10_000), &chunks);
            prop_assert_eq!(&whole, &pieces);
            for f in whole {
                if let Frame::Line(l) = f { prop_assert!(l.len() <= 8); }
            }
        }
    }
}
