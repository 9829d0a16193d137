//! A framing guard on the raw HTTP/1.1 byte stream, for the few RFC 9112 violations hyper
//! tolerates by normalising them before any service sees the head:
//!
//! - `Content-Length` together with `Transfer-Encoding` (hyper drops the length, decodes chunked
//!   and closes the connection),
//! - a repeated `Content-Length`, even with the same value (hyper keeps one),
//! - malformed chunk extensions (hyper skips extension bytes without looking at them).
//!
//! RFC 9112 allows a recipient to recover from the first two, but a proxy that recovers forwards a
//! request some other hop may frame differently; pilotfish refuses them with `400` and closes, like
//! the other framing errors. The parsed head no longer shows these cases, so the guard watches the
//! bytes as they are read and follows message boundaries (heads, `Content-Length` bodies, chunked
//! bodies with trailers) with constant memory. On a violation the reader ([`super::listener`]'s
//! `TimedIo`) *cuts* the stream where the offending line ends and hands hyper a few poisoned bytes
//! in place of the rest (see [`Cut`]): hyper then rejects the message through its own parse error
//! path, so the client gets `400 Bad Request` after any earlier pipelined responses, and the
//! connection closes; nothing of the message reaches a target. No maintained crate validates framing as a stream filter in front of another parser,
//! hence this one.
//!
//! The guard only ever *adds* rejections: if it loses track (a message hyper itself rejects, an
//! HTTP/2 connection), it switches off and leaves the connection to hyper.

/// Why the guard rejected a message (for logs and the access log's `error` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Violation {
    DuplicateContentLength = 1,
    ContentLengthAndTransferEncoding = 2,
    InvalidContentLength = 3,
    InvalidChunkExtension = 4,
}

impl Violation {
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::DuplicateContentLength => "duplicate_content_length",
            Violation::ContentLengthAndTransferEncoding => "content_length_and_transfer_encoding",
            Violation::InvalidContentLength => "invalid_content_length",
            Violation::InvalidChunkExtension => "invalid_chunk_extension",
        }
    }

    pub fn from_u8(v: u8) -> Option<Violation> {
        Some(match v {
            1 => Violation::DuplicateContentLength,
            2 => Violation::ContentLengthAndTransferEncoding,
            3 => Violation::InvalidContentLength,
            4 => Violation::InvalidChunkExtension,
            _ => return None,
        })
    }
}

/// Where to cut the stream: the bytes of this read from `at` on are dropped, `inject` is handed to
/// hyper in their place, and then the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub at: usize,
    pub inject: &'static [u8],
}

/// Replaces the LF of a refused header line. After the line's CR (or last value byte) a NUL is an
/// invalid field byte for httparse, and the CRLF CRLF after it lets hyper's partial-read fast path
/// (it re-parses only once it sees the end of a head) see a complete head, and fail it.
const POISON_HEAD: &[u8] = b"\0\r\n\r\n";

/// Replaces the CR of a refused chunk-size line: an LF there is rejected by every hyper decoder
/// state of a chunk-size line ("invalid chunk extension contains newline" / "Invalid Size").
const POISON_CHUNK: &[u8] = b"\n";

/// How many bytes of a head line are kept: enough for the field names the guard looks at and
/// any sane `Content-Length` value. A longer `Content-Length` line is refused.
const LINE_KEEP: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head (`seen_request_line` tells whether the request line has passed).
    Head,
    /// In a `Content-Length` body: this many bytes left.
    Body(u64),
    /// Chunk-size line: hex digits (`digits` so far, value in `chunk`).
    Size,
    /// Whitespace after the size: only `;` or more whitespace may follow.
    SizeWs,
    /// Before an extension name (after `;`, whitespace allowed).
    ExtPreName,
    ExtName,
    ExtAfterName,
    ExtPreValue,
    ExtValue,
    ExtQuoted,
    ExtQuotedEscape,
    /// Just after a quoted value's closing quote.
    ExtAfterQuoted,
    /// Whitespace after an extension value: only `;` may follow.
    ExtTrailingWs,
    /// A malformed extension: read on to the line's CR, then poison it.
    Doomed,
    /// CR of the size line seen: LF next.
    SizeLf,
    /// Chunk data: this many bytes left, then CR LF.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CR LF.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    /// HTTP/2, or a stream hyper is going to reject anyway: not watched.
    Off,
}

/// The per-connection guard. See the module docs.
#[derive(Debug)]
pub struct FramingGuard {
    state: State,
    seen_request_line: bool,
    content_lengths: u8,
    content_length: u64,
    chunked: bool,
    chunk: u64,
    digits: u8,
    /// The current chunk-size line is malformed: poison its CR.
    doomed: bool,
    line: [u8; LINE_KEEP],
    line_len: usize,
    line_overflow: bool,
    violation: Option<Violation>,
    cut: Option<Cut>,
}

impl Default for FramingGuard {
    fn default() -> Self {
        FramingGuard {
            state: State::Head,
            seen_request_line: false,
            content_lengths: 0,
            content_length: 0,
            chunked: false,
            chunk: 0,
            digits: 0,
            doomed: false,
            line: [0; LINE_KEEP],
            line_len: 0,
            line_overflow: false,
            violation: None,
            cut: None,
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl FramingGuard {
    /// The violation found, once one was.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// True when the guard no longer watches this connection.
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Scans bytes just read from the client, in order; on a violation, says where to cut them.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<Cut> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return self.cut.take(),
                State::Head => i = self.scan_head(bytes, i),
                State::Body(left) => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::Head } else { State::Body(left) };
                }
                State::Data(left) => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                _ => {
                    self.chunk_byte(bytes, i);
                    i += 1;
                }
            }
        }
        self.cut.take()
    }

    /// Consumes head bytes from `from` up to and including the next LF; returns where it stopped.
    fn scan_head(&mut self, bytes: &[u8], from: usize) -> usize {
        let rest = &bytes[from..];
        let (end, complete) = match memchr::memchr(b'\n', rest) {
            Some(n) => (n, true),
            None => (rest.len(), false),
        };
        if complete && self.line_len == 0 && !self.line_overflow {
            // The usual case: the whole line is in this read; look at it in place.
            self.end_head_line(&rest[..end], false, from + end);
            return from + end + 1;
        }
        let keep = end.min(LINE_KEEP - self.line_len);
        self.line[self.line_len..self.line_len + keep].copy_from_slice(&rest[..keep]);
        self.line_len += keep;
        self.line_overflow |= keep < end;
        if !complete {
            return bytes.len();
        }
        let (line, len, overflow) = (self.line, self.line_len, self.line_overflow);
        self.line_len = 0;
        self.line_overflow = false;
        self.end_head_line(&line[..len], overflow, from + end);
        from + end + 1
    }

    /// A complete head line (without its LF; only its first [`LINE_KEEP`] bytes when `overflow`);
    /// `lf` is where its LF is in this read.
    fn end_head_line(&mut self, line: &[u8], overflow: bool, lf: usize) {
        let mut line = line;
        if !overflow {
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
        }
        if !self.seen_request_line {
            if line.is_empty() && !overflow {
                return; // empty lines before a request line are ignored (RFC 9112 section 2.2)
            }
            if line.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
            }
            self.seen_request_line = true;
            return;
        }
        if line.is_empty() && !overflow {
            // End of the head: the body follows.
            self.state = if self.chunked {
                State::Size
            } else if self.content_length > 0 {
                State::Body(self.content_length)
            } else {
                State::Head
            };
            self.chunk = 0;
            self.digits = 0;
            self.doomed = false;
            self.seen_request_line = false;
            self.content_lengths = 0;
            self.content_length = 0;
            self.chunked = false;
            return;
        }
        // Only Content-Length and Transfer-Encoding matter here.
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { return };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_lengths = self.content_lengths.saturating_add(1);
            let parsed = (!overflow && !value.is_empty() && value.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                .flatten();
            if self.content_lengths > 1 {
                self.reject(lf, Violation::DuplicateContentLength);
            } else if self.chunked {
                self.reject(lf, Violation::ContentLengthAndTransferEncoding);
            } else if let Some(n) = parsed {
                self.content_length = n;
            } else {
                self.reject(lf, Violation::InvalidContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Which codings are acceptable is the service's check; here only the framing matters.
            self.chunked = true;
            if self.content_lengths > 0 {
                self.reject(lf, Violation::ContentLengthAndTransferEncoding);
            }
        }
    }

    fn reject(&mut self, lf: usize, why: Violation) {
        self.violation = Some(why);
        self.cut = Some(Cut { at: lf, inject: POISON_HEAD });
        self.state = State::Off;
    }

    /// One byte of a chunk-size line, chunk delimiter or trailer section, mirroring hyper's
    /// decoder and, for extensions, RFC 9112 section 7.1.1:
    /// `chunk-size *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF`.
    fn chunk_byte(&mut self, bytes: &[u8], i: usize) {
        use State::*;
        let b = bytes[i];
        if self.state.in_size_line() {
            match b {
                b'\r' => {
                    if self.state == Size && self.digits == 0 {
                        self.state = Off; // hyper: missing size digit
                        return;
                    }
                    if !matches!(self.state, Size | ExtName | ExtValue | ExtAfterQuoted) {
                        self.doomed = true; // e.g. "4 \r", "4;\r", "4;a=\r", "4;a=\"x\r"
                    }
                    if self.doomed {
                        self.violation = Some(Violation::InvalidChunkExtension);
                        self.cut = Some(Cut { at: i, inject: POISON_CHUNK });
                        self.state = Off;
                    } else {
                        self.state = SizeLf;
                    }
                    return;
                }
                // hyper rejects a bare LF in a chunk-size line itself.
                b'\n' => {
                    self.state = Off;
                    return;
                }
                _ => {}
            }
        }
        let next = match self.state {
            Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    match self.chunk.checked_mul(16).and_then(|c| c.checked_add(digit)) {
                        Some(c) => {
                            self.chunk = c;
                            self.digits = self.digits.saturating_add(1);
                            Size
                        }
                        None => Off, // hyper rejects the overflow itself
                    }
                }
                _ if self.digits == 0 => Off, // hyper: missing size digit
                b';' => ExtPreName,
                _ if is_ws(b) => SizeWs,
                _ => Off, // hyper: invalid size
            },
            SizeWs => match b {
                b';' => ExtPreName,
                _ if is_ws(b) => SizeWs,
                _ => Off, // hyper: invalid chunk size linear white space
            },
            ExtPreName => match b {
                _ if is_ws(b) => ExtPreName,
                _ if is_tchar(b) => ExtName,
                _ => Doomed,
            },
            ExtName => match b {
                _ if is_tchar(b) => ExtName,
                _ if is_ws(b) => ExtAfterName,
                b'=' => ExtPreValue,
                b';' => ExtPreName,
                _ => Doomed,
            },
            ExtAfterName => match b {
                _ if is_ws(b) => ExtAfterName,
                b'=' => ExtPreValue,
                b';' => ExtPreName,
                _ => Doomed,
            },
            ExtPreValue => match b {
                _ if is_ws(b) => ExtPreValue,
                b'"' => ExtQuoted,
                _ if is_tchar(b) => ExtValue,
                _ => Doomed,
            },
            ExtValue => match b {
                _ if is_tchar(b) => ExtValue,
                _ if is_ws(b) => ExtTrailingWs,
                b';' => ExtPreName,
                _ => Doomed,
            },
            ExtQuoted => match b {
                b'"' => ExtAfterQuoted,
                b'\\' => ExtQuotedEscape,
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => ExtQuoted,
                _ => Doomed,
            },
            ExtQuotedEscape => match b {
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => ExtQuoted,
                _ => Doomed,
            },
            ExtAfterQuoted | ExtTrailingWs => match b {
                _ if is_ws(b) => ExtTrailingWs,
                b';' => ExtPreName,
                _ => Doomed,
            },
            Doomed => Doomed,
            SizeLf => match b {
                b'\n' if self.chunk == 0 => TrailerStart,
                b'\n' => Data(self.chunk),
                _ => Off,
            },
            DataCr => match b {
                b'\r' => DataLf,
                _ => Off,
            },
            DataLf => match b {
                b'\n' => {
                    self.chunk = 0;
                    self.digits = 0;
                    Size
                }
                _ => Off,
            },
            TrailerStart => match b {
                b'\r' => EndLf,
                _ => TrailerLine,
            },
            TrailerLine => match b {
                b'\r' => TrailerLf,
                _ => TrailerLine,
            },
            TrailerLf => match b {
                b'\n' => TrailerStart,
                _ => Off,
            },
            EndLf => match b {
                b'\n' => Head,
                _ => Off,
            },
            Head | Body(_) | Data(_) | Off => unreachable!("handled in scan"),
        };
        if next == Doomed {
            self.doomed = true;
        }
        self.state = next;
    }
}

impl State {
    fn in_size_line(self) -> bool {
        use State::*;
        matches!(
            self,
            Size | SizeWs
                | ExtPreName
                | ExtName
                | ExtAfterName
                | ExtPreValue
                | ExtValue
                | ExtQuoted
                | ExtQuotedEscape
                | ExtAfterQuoted
                | ExtTrailingWs
                | Doomed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in reads of `read_size` bytes and returns what hyper would be handed (the
    /// stream up to a cut plus the injected bytes), the violation, and whether the guard is off.
    fn scan_in_reads(input: &[u8], read_size: usize) -> (Vec<u8>, Option<Violation>, bool) {
        let mut guard = FramingGuard::default();
        let mut handed = Vec::new();
        for chunk in input.chunks(read_size) {
            match guard.scan(chunk) {
                Some(cut) => {
                    handed.extend_from_slice(&chunk[..cut.at]);
                    handed.extend_from_slice(cut.inject);
                    break;
                }
                None => handed.extend_from_slice(chunk),
            }
        }
        (handed, guard.violation(), guard.is_off())
    }

    /// Every read size gives the same verdict and hands hyper the same bytes.
    fn verdict(input: &[u8]) -> (Vec<u8>, Option<Violation>) {
        let (whole_bytes, whole, _) = scan_in_reads(input, input.len().max(1));
        for size in 1..input.len() {
            let (bytes, v, _) = scan_in_reads(input, size);
            assert_eq!(v, whole, "read size {size} changes the verdict on {:?}", String::from_utf8_lossy(input));
            assert_eq!(bytes, whole_bytes, "read size {size} cuts differently");
        }
        (whole_bytes, whole)
    }

    const VALID: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  005 \r\n\r\nhello",
        b"POST / HTTP/1.1\nHost: a\nContent-Length: 2\n\nhi",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\r\nhello\r\nA;b=c;d=\"e \\\" f\"\r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a = b\r\nhello\r\n0\r\n\r\n",
        // Body bytes that look like framing headers are body bytes.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\n\r\nContent-Length: 1\r\nContent-Length: 2",
    ];

    #[test]
    fn valid_messages_pass_untouched_in_any_reads_and_pipelined() {
        for msg in VALID {
            assert_eq!(verdict(msg), (msg.to_vec(), None), "{:?}", String::from_utf8_lossy(msg));
            assert!(!scan_in_reads(msg, msg.len()).2, "still watching after {:?}", String::from_utf8_lossy(msg));
        }
        // All of them back to back on one connection, then one that must be refused: the guard
        // kept every boundary.
        let mut pipeline: Vec<u8> = VALID.iter().flat_map(|m| m.iter().copied()).collect();
        let valid_len = pipeline.len();
        pipeline.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        let (handed, v) = verdict(&pipeline);
        assert_eq!(v, Some(Violation::DuplicateContentLength));
        assert_eq!(handed[..valid_len], pipeline[..valid_len], "earlier messages untouched");
    }

    #[test]
    fn head_violations_cut_at_the_offending_line_and_hyper_refuses_the_head() {
        let cases: &[(&[u8], Violation)] = &[
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
                Violation::DuplicateContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Violation::ContentLengthAndTransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 4\r\nX: y\r\n\r\n",
                Violation::ContentLengthAndTransferEncoding,
            ),
            (b"POST / HTTP/1.1\nContent-Length: 4\nContent-Length: 4\n\nabcd", Violation::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcd", Violation::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd", Violation::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", Violation::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", Violation::InvalidContentLength),
        ];
        for (input, want) in cases {
            let (handed, v) = verdict(input);
            assert_eq!(v, Some(*want), "{:?}", String::from_utf8_lossy(input));
            assert!(handed.ends_with(POISON_HEAD));
            // httparse (hyper's head parser) refuses it, rather than waiting for more.
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let parsed = httparse::Request::new(&mut headers).parse(&handed);
            assert!(parsed.is_err(), "{:?} → {parsed:?}", String::from_utf8_lossy(&handed));
        }
    }

    #[test]
    fn bad_chunk_extensions_cut_at_the_size_line_cr() {
        let bad: &[&[u8]] = &[
            b"4;\r\n",
            b"4;=x\r\n",
            b"4;a=\r\n",
            b"4;a b\r\n",
            b"4;a=b c\r\n",
            b"4;a=b \r\n",
            b"4 \r\n",
            b"4;a=\"unterminated\r\n",
            b"4;a=\"x\x01\"\r\n",
            b"4;a@b\r\n",
            b"4;a\x00\r\n",
        ];
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for line in bad {
            let mut input = head.to_vec();
            input.extend_from_slice(line);
            input.extend_from_slice(b"abcd\r\n0\r\n\r\n");
            let (handed, v) = verdict(&input);
            assert_eq!(v, Some(Violation::InvalidChunkExtension), "{:?}", String::from_utf8_lossy(line));
            let cr = head.len() + line.len() - 2;
            assert_eq!(handed, [&input[..cr], POISON_CHUNK].concat(), "cut at the CR, LF handed instead");
        }
    }

    #[test]
    fn what_hyper_rejects_itself_switches_the_guard_off_untouched() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;a\nabcd",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcdXY",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n",
        ];
        for input in cases {
            let (handed, v, off) = scan_in_reads(input, input.len());
            assert_eq!((v, off, &handed[..]), (None, true, *input), "{:?}", String::from_utf8_lossy(input));
        }
    }
}
