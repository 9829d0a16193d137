//! Body framing: a decoder that finds the body bytes of a message in what has been read
//! (`Content-Length`, `chunked` or until close), and the chunked encoder's size lines.
//!
//! The decoder works on whatever part of the stream is buffered and only decides on complete
//! units: a chunk-size line is judged once its line break is in the buffer, a trailer section
//! once its final empty line is; until then it asks for more (and bounds how much it waits for).
//! So the same bytes give the same body however they were split into reads (a property test
//! checks it). Chunk-size lines follow RFC 9112 section 7.1: hex digits, then only well-formed
//! extensions (`; name [= token / quoted-string]`, whitespace only around `;` and `=`), then
//! CRLF. Extensions are dropped when re-framing; trailers are checked as field lines and
//! passed on.

/// Longest chunk-size line (with extensions) waited for.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section waited for.
pub const MAX_TRAILERS: usize = 8192;

/// Why a body could not be decoded (for the log; the message is cut).
pub type BodyError = &'static str;

/// What the decoder found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Body bytes: this range of the input (framing before it is consumed with it).
    Data(std::ops::Range<usize>),
    /// The trailer section (field lines and the final CRLF), this range of the input.
    Trailers(std::ops::Range<usize>),
    /// The body is complete.
    End,
    /// Nothing more can be decided without more bytes.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// The CRLF after chunk data is next.
    DataEnd,
    /// After the last chunk: trailer lines or the final CRLF.
    Trailers,
}

/// The body decoder of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkState),
    /// Until the connection closes.
    Close,
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkState(Chunk);

impl Decoder {
    /// The decoder for a body framed as `len`.
    pub fn new(len: super::parse::BodyLen) -> Decoder {
        use super::parse::BodyLen;
        match len {
            BodyLen::None | BodyLen::Length(0) => Decoder::Done,
            BodyLen::Length(n) => Decoder::Length(n),
            BodyLen::Chunked => Decoder::Chunked(ChunkState(Chunk::Size)),
            BodyLen::Close => Decoder::Close,
        }
    }

    /// Whether the whole body has been decoded.
    #[inline]
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Decodes from the start of `input` (the bytes not consumed yet). Returns how many bytes
    /// to consume and what they held; `Data` and `Trailers` ranges lie within the consumed part.
    pub fn next(&mut self, input: &[u8]) -> Result<(usize, Event), BodyError> {
        match self {
            Decoder::Done => Ok((0, Event::End)),
            Decoder::Length(left) => {
                if input.is_empty() {
                    return Ok((0, Event::More));
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(input.len());
                *left -= n as u64;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok((n, Event::Data(0..n)))
            }
            Decoder::Close => {
                if input.is_empty() {
                    return Ok((0, Event::More));
                }
                Ok((input.len(), Event::Data(0..input.len())))
            }
            Decoder::Chunked(state) => {
                let mut used = 0;
                loop {
                    let rest = &input[used..];
                    match state.0 {
                        Chunk::Size => {
                            let Some(lf) = memchr::memchr(b'\n', rest) else {
                                if rest.len() > MAX_SIZE_LINE {
                                    return Err("chunk_size_line_too_long");
                                }
                                return Ok((used, Event::More));
                            };
                            if lf > MAX_SIZE_LINE {
                                // The same verdict as when the line arrives in pieces (above).
                                return Err("chunk_size_line_too_long");
                            }
                            let line = rest[..lf].strip_suffix(b"\r").ok_or("bare_lf_in_chunk_size_line")?;
                            let size = chunk_size_line(line)?;
                            used += lf + 1;
                            state.0 = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        }
                        Chunk::Data(left) => {
                            if rest.is_empty() {
                                return Ok((used, Event::More));
                            }
                            let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                            state.0 = if n as u64 == left { Chunk::DataEnd } else { Chunk::Data(left - n as u64) };
                            return Ok((used + n, Event::Data(used..used + n)));
                        }
                        Chunk::DataEnd => {
                            if rest.len() < 2 {
                                return match rest {
                                    [] | [b'\r'] => Ok((used, Event::More)),
                                    _ => Err("missing_crlf_after_chunk"),
                                };
                            }
                            if &rest[..2] != b"\r\n" {
                                return Err("missing_crlf_after_chunk");
                            }
                            used += 2;
                            state.0 = Chunk::Size;
                        }
                        Chunk::Trailers => {
                            let n = match trailer_section(rest)? {
                                Some(n) => n,
                                None => return Ok((used, Event::More)),
                            };
                            *self = Decoder::Done;
                            if n == 2 {
                                return Ok((used + 2, Event::End));
                            }
                            return Ok((used + n, Event::Trailers(used..used + n)));
                        }
                    }
                }
            }
        }
    }

    /// The peer closed: fine for a body delimited by close (it ends here), else the body was
    /// cut short.
    pub fn at_eof(&mut self) -> Result<(), BodyError> {
        match self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err("body_truncated"),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ws(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    i
}

fn skip_token(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && is_tchar(line[i]) {
        i += 1;
    }
    i
}

/// Checks a chunk-size line (without CRLF) and returns the size:
/// `1*16HEXDIG *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size_line(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid_chunk_size");
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0)));
    let mut i = digits;
    while i < line.len() {
        i = skip_ws(line, i);
        if line.get(i) != Some(&b';') {
            return Err("invalid_chunk_extension");
        }
        i = skip_ws(line, i + 1);
        let name_end = skip_token(line, i);
        if name_end == i {
            return Err("invalid_chunk_extension");
        }
        i = skip_ws(line, name_end);
        if line.get(i) != Some(&b'=') {
            if i < line.len() && line[i] != b';' {
                return Err("invalid_chunk_extension");
            }
            if i == line.len() && i > name_end {
                return Err("invalid_chunk_extension"); // whitespace at the end of the line
            }
            continue;
        }
        i = skip_ws(line, i + 1);
        if line.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match line.get(i) {
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match line.get(i + 1) {
                        Some(&c) if c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80 => i += 2,
                        _ => return Err("invalid_chunk_extension"),
                    },
                    Some(&c) if c == b'\t' || c == b' ' || c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80 => {
                        i += 1
                    }
                    _ => return Err("invalid_chunk_extension"),
                }
            }
        } else {
            let end = skip_token(line, i);
            if end == i {
                return Err("invalid_chunk_extension");
            }
            i = end;
        }
        // After a value: end of line, or whitespace followed by another extension.
        let ws_end = skip_ws(line, i);
        if ws_end == line.len() && ws_end > i {
            return Err("invalid_chunk_extension");
        }
    }
    Ok(size)
}

/// The length of a complete trailer section at the start of `rest` (its field lines and the
/// final CRLF), `None` if incomplete. Field lines must be valid and end with CRLF.
fn trailer_section(rest: &[u8]) -> Result<Option<usize>, BodyError> {
    if rest.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    let mut fields = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(rest, &mut fields) {
        Ok(httparse::Status::Complete((n, _))) if n > MAX_TRAILERS => Err("trailers_too_large"),
        Ok(httparse::Status::Complete((n, fields))) => {
            // Fields pilotfish sets from the TLS handshake never come from a peer, trailers
            // included (an application may merge trailers into the header fields).
            if fields.iter().any(|f| crate::tls::mtls::is_mtls_header(f.name.as_bytes())) {
                return Err("forbidden_trailer");
            }
            let section = &rest[..n];
            let bare_lf = section.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
            if bare_lf {
                return Err("invalid_trailers");
            }
            Ok(Some(n))
        }
        Ok(httparse::Status::Partial) if rest.len() <= MAX_TRAILERS => Ok(None),
        Ok(httparse::Status::Partial) => Err("trailers_too_large"),
        Err(_) => Err("invalid_trailers"),
    }
}

/// Writes the chunk-size line for `n` bytes (`{n:x}\r\n`) into `out`; returns its length.
pub fn size_line(n: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = if n == 0 { 1 } else { (usize::BITS - n.leading_zeros()).div_ceil(4) as usize };
    for i in 0..digits {
        out[i] = HEX[(n >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::super::parse::BodyLen;
    use super::*;

    /// Decodes `bytes` fed in pieces of `step` bytes, as a connection would: returns the body,
    /// the trailer section, and how many bytes the body took (or the error).
    pub(crate) fn decode_in_steps(
        len: BodyLen,
        bytes: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>, usize), BodyError> {
        let mut d = Decoder::new(len);
        let (mut body, mut trailers) = (Vec::new(), Vec::new());
        let (mut start, mut avail) = (0, 0);
        loop {
            let (used, ev) = d.next(&bytes[start..avail])?;
            match ev {
                Event::Data(r) => body.extend_from_slice(&bytes[start + r.start..start + r.end]),
                Event::Trailers(r) => trailers.extend_from_slice(&bytes[start + r.start..start + r.end]),
                Event::End => return Ok((body, trailers, start + used)),
                Event::More => {
                    if avail == bytes.len() {
                        d.at_eof()?;
                        return Ok((body, trailers, avail));
                    }
                    avail = (avail + step).min(bytes.len());
                }
            }
            start += used;
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_in_any_pieces() {
        let msg = b"5;a;b=c ; d=\"e \\\" f\"\r\nhello\r\n1 ;x=y\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..msg.len() {
            let (body, trailers, used) = decode_in_steps(BodyLen::Chunked, msg, step).unwrap();
            assert_eq!((&body[..], &trailers[..], used), (&b"hello!"[..], &b"X-T: 1\r\n\r\n"[..], msg.len() - 4));
        }
    }

    #[test]
    fn malformed_chunk_lines_are_refused() {
        for bad in [
            "4;\r\n",
            "4;a b\r\n",
            "4;a=\"x\r\n",
            "4;a=b c\r\n",
            "4 \r\n",
            "4;a@b\r\n",
            "zz\r\n",
            "\r\n",
            "ffffffffffffffffff\r\n",
            "4\n",
            "4;a=\r\n",
            "4;a=b \r\n",
        ] {
            let msg = format!("{bad}abcd\r\n0\r\n\r\n");
            assert!(decode_in_steps(BodyLen::Chunked, msg.as_bytes(), 64).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            decode_in_steps(BodyLen::Chunked, b"4\r\nabcdXY0\r\n\r\n", 64).unwrap_err(),
            "missing_crlf_after_chunk"
        );
        assert_eq!(decode_in_steps(BodyLen::Chunked, b"4\r\nab", 64).unwrap_err(), "body_truncated");
        assert_eq!(decode_in_steps(BodyLen::Chunked, b"0\r\nX: a\nY: b\r\n\r\n", 64).unwrap_err(), "invalid_trailers");
        let forged = b"0\r\nX-Amzn-Mtls-Clientcert-Subject: CN=admin\r\n\r\n";
        assert_eq!(decode_in_steps(BodyLen::Chunked, forged, 64).unwrap_err(), "forbidden_trailer");
        assert!(decode_in_steps(BodyLen::Chunked, b"4;a=b;c=\"d\"\r\nabcd\r\n0\r\n\r\n", 64).is_ok());
    }

    #[test]
    fn lengths_and_close_delimited_bodies() {
        assert_eq!(decode_in_steps(BodyLen::Length(3), b"abcdef", 2).unwrap(), (b"abc".to_vec(), vec![], 3));
        assert_eq!(decode_in_steps(BodyLen::Length(7), b"abc", 2).unwrap_err(), "body_truncated");
        assert_eq!(decode_in_steps(BodyLen::Close, b"abc", 2).unwrap(), (b"abc".to_vec(), vec![], 3));
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        let mut out = [0u8; 18];
        for (n, want) in
            [(0, "0\r\n"), (9, "9\r\n"), (16, "10\r\n"), (0xabc, "abc\r\n"), (usize::MAX, "ffffffffffffffff\r\n")]
        {
            let len = size_line(n, &mut out);
            assert_eq!(&out[..len], want.as_bytes());
        }
    }
}
