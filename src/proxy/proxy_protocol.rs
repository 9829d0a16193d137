//! The PROXY protocol (HAProxy's specification, version 1 text and version 2 binary): the
//! header a Layer-4 balancer (an AWS NLB, HAProxy in TCP mode) puts before a connection's bytes
//! to say whom the connection is really from. Listeners with `proxy_protocol = { trusted }`
//! read it from trusted peers ([`read_header`]) and refuse one from anybody else
//! ([`refuse_untrusted`]); target groups with `send_proxy_protocol` write it ([`encode`]).
//!
//! Written here, not taken from a crate: the parser is a pure function over the bytes seen so
//! far ([`parse`]) that says *complete (n bytes)*, *incomplete* or *refused, why*, which lets
//! the reader consume exactly the header's bytes with `peek` and never a byte of the request
//! behind it (no buffer to hand over to TLS or the HTTP/1.1 engine, no allocation). It is
//! strict where the specification is: single spaces, addresses of the announced family, ports
//! without leading zeros, a v1 line of at most 107 bytes ending in CRLF, a v2 version of 2,
//! TLVs that exactly fill the announced length. A v2 block longer than [`V2_MAX_BODY`] is
//! refused: NLB's headers are under 100 bytes. `tests/properties.rs` checks it against
//! [`encode`] and arbitrary bytes.
//!
//! Semantics: `PROXY` over TCP/IPv4 or TCP/IPv6 gives the client's address; `LOCAL` (v2; NLB's
//! health checks), v1 `UNKNOWN` and v2 `AF_UNSPEC` mean "use the connection's own addresses",
//! as the specification says. UDP and UNIX-socket families are refused: a TCP listener has no
//! use for them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::TcpStream;

/// The twelve bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest version 2 address block and TLVs accepted.
pub const V2_MAX_BODY: usize = 512;
/// The longest header accepted, either version.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;

/// Which header a target group sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// Use the connection's own addresses (`LOCAL`, `UNKNOWN`, `AF_UNSPEC`).
    Local,
    /// The connection is from `src` to `dst`.
    Tcp { src: SocketAddr, dst: SocketAddr },
}

/// The outcome of [`parse`] on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The header is longer than what was seen (every byte seen belongs to it).
    Incomplete,
    /// A whole header of `len` bytes.
    Done { len: usize, addrs: Addresses },
}

/// Why a connection was refused, as `pilotfish_proxy_protocol_errors_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A trusted peer's connection does not start with a PROXY header.
    Missing,
    /// A header that breaks the specification.
    Malformed,
    /// Longer than [`V1_MAX`] / [`MAX_HEADER`].
    Oversized,
    /// A UDP or UNIX-socket header.
    Unsupported,
    /// The connection ended inside the header.
    Truncated,
    /// The header did not arrive within `header_read_timeout`.
    Timeout,
    /// A header from a peer that is not trusted.
    Untrusted,
}

impl Refused {
    pub const ALL: [Refused; 7] = [
        Refused::Missing,
        Refused::Malformed,
        Refused::Oversized,
        Refused::Unsupported,
        Refused::Truncated,
        Refused::Timeout,
        Refused::Untrusted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Malformed => "malformed",
            Refused::Oversized => "oversized",
            Refused::Unsupported => "unsupported",
            Refused::Truncated => "truncated",
            Refused::Timeout => "timeout",
            Refused::Untrusted => "untrusted",
        }
    }
}

/// Parses the header at the start of `buf` (the bytes seen so far).
pub fn parse(buf: &[u8]) -> Result<Parsed, Refused> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Refused::Missing),
    }
}

/// Whether `buf` starts like a header of either version: `Some(true)` it is one (its signature
/// is complete), `Some(false)` it is not, `None` too few bytes to tell.
pub fn looks_like_header(buf: &[u8]) -> Option<bool> {
    for sig in [V1_PREFIX, &V2_SIGNATURE[..]] {
        let n = buf.len().min(sig.len());
        if buf[..n] == sig[..n] {
            return if n == sig.len() { Some(true) } else { None };
        }
    }
    Some(false)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Refused> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(Refused::Missing);
    }
    let Some(lf) = memchr::memchr(b'\n', &buf[..buf.len().min(V1_MAX)]) else {
        return if buf.len() >= V1_MAX { Err(Refused::Oversized) } else { Ok(Parsed::Incomplete) };
    };
    if lf < V1_PREFIX.len() + 1 || buf[lf - 1] != b'\r' {
        return Err(Refused::Malformed);
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1]).map_err(|_| Refused::Malformed)?;
    let len = lf + 1;
    if let Some(rest) = line.strip_prefix("UNKNOWN") {
        // "the receiver must ignore anything presented before the CRLF is found"
        return if rest.is_empty() || rest.starts_with(' ') {
            Ok(Parsed::Done { len, addrs: Addresses::Local })
        } else {
            Err(Refused::Malformed)
        };
    }
    let mut parts = line.split(' ');
    let (Some(family), Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Malformed);
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (ip::<Ipv4Addr>(src)?.into(), ip::<Ipv4Addr>(dst)?.into()),
        "TCP6" => (ip::<Ipv6Addr>(src)?.into(), ip::<Ipv6Addr>(dst)?.into()),
        _ => return Err(Refused::Malformed),
    };
    let addrs = Addresses::Tcp { src: SocketAddr::new(src, port(sport)?), dst: SocketAddr::new(dst, port(dport)?) };
    Ok(Parsed::Done { len, addrs })
}

fn ip<T: FromStr>(s: &str) -> Result<T, Refused> {
    s.parse().map_err(|_| Refused::Malformed)
}

/// A decimal port: 0..=65535, no sign, no leading zero.
fn port(s: &str) -> Result<u16, Refused> {
    let ok =
        !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(Refused::Malformed);
    }
    s.parse().map_err(|_| Refused::Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Refused> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Refused::Missing);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Refused::Malformed);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Refused::Malformed),
    };
    if body > V2_MAX_BODY {
        return Err(Refused::Oversized);
    }
    if buf.len() < 16 + body {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[16..16 + body];
    let len = 16 + body;
    let (addrs, used) = match (fam >> 4, fam & 0x0f) {
        // Family and transport must be known values even when the addresses are not used.
        (f, t) if f > 3 || t > 2 => return Err(Refused::Malformed),
        // LOCAL and AF_UNSPEC: the block is discarded, as the specification says.
        _ if local => (Addresses::Local, 0),
        (0, _) => (Addresses::Local, 0),
        (1, 1) if body >= 12 => {
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&block[0..4]).unwrap_or_default());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&block[4..8]).unwrap_or_default());
            let (sport, dport) = ports(&block[8..12]);
            (Addresses::Tcp { src: SocketAddr::new(src.into(), sport), dst: SocketAddr::new(dst.into(), dport) }, 12)
        }
        (2, 1) if body >= 36 => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&block[0..16]).unwrap_or_default());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&block[16..32]).unwrap_or_default());
            let (sport, dport) = ports(&block[32..36]);
            (Addresses::Tcp { src: SocketAddr::new(src.into(), sport), dst: SocketAddr::new(dst.into(), dport) }, 36)
        }
        (1 | 2, 1) => return Err(Refused::Malformed),
        _ => return Err(Refused::Unsupported),
    };
    if addrs != Addresses::Local {
        tlvs_fit(&block[used..])?;
    }
    Ok(Parsed::Done { len, addrs })
}

fn ports(b: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]]))
}

/// Checks that `rest` is a sequence of whole TLVs (type, 16-bit length, value).
fn tlvs_fit(mut rest: &[u8]) -> Result<(), Refused> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(Refused::Malformed);
        }
        let n = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rest = rest.get(3 + n..).ok_or(Refused::Malformed)?;
    }
    Ok(())
}

/// The header announcing a connection from `src` to `dst` (`None`: v1 `UNKNOWN`, v2 `LOCAL`
/// — health checks). A pair of different families is announced as IPv6 (IPv4-mapped).
pub fn encode(version: Version, endpoints: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let endpoints = endpoints.map(|(s, d)| same_family(s, d));
    match version {
        Version::V1 => match endpoints {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((s, d)) => {
                let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
            }
        },
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            match endpoints {
                None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
                Some((s, d)) => {
                    match (s.ip(), d.ip()) {
                        (IpAddr::V4(a), IpAddr::V4(b)) => {
                            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                            out.extend_from_slice(&a.octets());
                            out.extend_from_slice(&b.octets());
                        }
                        (a, b) => {
                            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                            out.extend_from_slice(&v6(a).octets());
                            out.extend_from_slice(&v6(b).octets());
                        }
                    }
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            out
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Both addresses canonical (IPv4-mapped as IPv4), then of one family.
fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (SocketAddr::new(s.ip().to_canonical(), s.port()), SocketAddr::new(d.ip().to_canonical(), d.port()));
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (SocketAddr::new(v6(s.ip()).into(), s.port()), SocketAddr::new(v6(d.ip()).into(), d.port()))
    }
}

/// Reads a trusted peer's header from `stream`, consuming exactly its bytes, within `timeout`.
///
/// Each `peek` shows what has arrived; while the header is incomplete every byte seen belongs
/// to it and is consumed, so the next `peek` waits for new bytes instead of spinning.
pub async fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Addresses, Refused> {
    let work = async {
        let mut buf = [0u8; MAX_HEADER];
        let mut have = 0;
        loop {
            let n = stream.peek(&mut buf[have..]).await.map_err(|_| Refused::Truncated)?;
            if n == 0 {
                return Err(if have == 0 { Refused::Missing } else { Refused::Truncated });
            }
            match parse(&buf[..have + n])? {
                Parsed::Done { len, addrs } => {
                    consume(stream, &mut buf[have..len]).await?;
                    return Ok(addrs);
                }
                Parsed::Incomplete => {
                    consume(stream, &mut buf[have..have + n]).await?;
                    have += n;
                    if have == buf.len() {
                        return Err(Refused::Oversized);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(Refused::Timeout))
}

/// Reads `into.len()` bytes already seen by `peek` (they are in the socket's buffer).
async fn consume(stream: &TcpStream, into: &mut [u8]) -> Result<(), Refused> {
    let mut filled = 0;
    while filled < into.len() {
        stream.readable().await.map_err(|_| Refused::Truncated)?;
        match stream.try_read(&mut into[filled..]) {
            Ok(0) => return Err(Refused::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Refused::Truncated),
        }
    }
    Ok(())
}

/// For a peer that is not trusted on a listener that reads PROXY headers: `Err(Untrusted)` if
/// the connection starts with one (it is never believed), else `Ok` with nothing consumed.
///
/// Most connections are decided by their first byte (a method letter other than `P`, a TLS
/// record). A first segment too short to tell (`P`, `PRO`, a bare CR) is looked at again, at
/// intervals doubling from 5 ms to 200 ms, until it can be, within `timeout` (then it is left
/// to the protocol's own timeout): `peek` cannot wait for *more* bytes than are there.
pub async fn refuse_untrusted(stream: &TcpStream, timeout: Duration) -> Result<(), Refused> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; V2_SIGNATURE.len()];
    let mut step = Duration::from_millis(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        match looks_like_header(&buf[..n]) {
            Some(true) => return Err(Refused::Untrusted),
            Some(false) => return Ok(()),
            None if n == 0 => return Ok(()),
            None => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(());
                }
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_millis(200));
            }
        }
    }
}

impl Addresses {
    /// The client address, if the header gave one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            Addresses::Local => None,
            Addresses::Tcp { src, .. } => Some(*src),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (usize, Addresses) {
        match parse(buf) {
            Ok(Parsed::Done { len, addrs }) => (len, addrs),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn tcp(src: &str, dst: &str) -> Addresses {
        Addresses::Tcp { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(done(h), (45, tcp("192.0.2.1:56324", "198.51.100.2:443")));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(done(h), (h.len(), tcp("[2001:db8::1]:1", "[2001:db8::2]:65535")));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (15, Addresses::Local));
        assert_eq!(done(b"PROXY UNKNOWN ff::1 ff::2 1 2\r\n").1, Addresses::Local);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
        ] {
            assert_eq!(parse(bad), Err(Refused::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Refused::Missing));
        assert_eq!(parse(b"POST / HTTP/1.1\r\n"), Err(Refused::Missing));
        assert_eq!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)), Err(Refused::Oversized));
    }

    #[test]
    fn version_2() {
        let h = encode(Version::V2, Some(("10.0.0.1:1234".parse().unwrap(), "10.0.0.2:443".parse().unwrap())));
        assert_eq!(h.len(), 28);
        assert_eq!(done(&h), (28, tcp("10.0.0.1:1234", "10.0.0.2:443")));
        let h6 = encode(Version::V2, Some(("[2001:db8::7]:9".parse().unwrap(), "[2001:db8::8]:80".parse().unwrap())));
        assert_eq!(done(&h6), (52, tcp("[2001:db8::7]:9", "[2001:db8::8]:80")));
        assert_eq!(done(&encode(Version::V2, None)), (16, Addresses::Local));
        // NLB: LOCAL with an address block, and PROXY with its VPC endpoint TLV (type 0xEA).
        let mut nlb = h[..16].to_vec();
        nlb[12] = 0x20;
        nlb.extend_from_slice(&h[16..]);
        assert_eq!(done(&nlb).1, Addresses::Local);
        let mut tlv = h.clone();
        tlv[15] = 12 + 3 + 9;
        tlv.extend_from_slice(&[0xEA, 0, 9, 1, b'v', b'p', b'c', b'e', b'-', b'a', b'b', b'c']);
        assert_eq!(done(&tlv), (16 + 24, tcp("10.0.0.1:1234", "10.0.0.2:443")));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        let with = |i: usize, b: u8| {
            let mut x = h.clone();
            x[i] = b;
            parse(&x)
        };
        assert_eq!(with(12, 0x11), Err(Refused::Malformed), "version 1 in a v2 header");
        assert_eq!(with(12, 0x22), Err(Refused::Malformed), "unknown command");
        assert_eq!(with(13, 0x12), Err(Refused::Unsupported), "UDP");
        assert_eq!(with(13, 0x31), Err(Refused::Unsupported), "UNIX");
        assert_eq!(with(13, 0x41), Err(Refused::Malformed), "unknown family");
        assert_eq!(with(15, 11), Err(Refused::Malformed), "address block too short");
        assert_eq!(with(15, 13), Ok(Parsed::Incomplete));
        let mut long = h.clone();
        long[15] = 14;
        long.extend_from_slice(&[0xEA, 0]);
        assert_eq!(parse(&long), Err(Refused::Malformed), "a TLV cut short");
        let mut big = h.clone();
        big[14] = 0x02;
        big[15] = 0x01;
        assert_eq!(parse(&big), Err(Refused::Oversized));
        assert_eq!(with(3, b'X'), Err(Refused::Missing));
        assert_eq!(done(&[&V2_SIGNATURE[..], &[0x21, 0x00, 0, 0]].concat()).1, Addresses::Local, "AF_UNSPEC");
    }

    #[test]
    fn version_1_encoding() {
        let e = encode(Version::V1, Some(("[::ffff:10.1.2.3]:5".parse().unwrap(), "10.0.0.9:80".parse().unwrap())));
        assert_eq!(e, b"PROXY TCP4 10.1.2.3 10.0.0.9 5 80\r\n");
        let e = encode(Version::V1, Some(("10.1.2.3:5".parse().unwrap(), "[2001:db8::1]:80".parse().unwrap())));
        assert_eq!(e, b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::1 5 80\r\n");
        assert_eq!(encode(Version::V1, None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn reasons_are_listed_in_order() {
        assert!(Refused::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
    }

    #[test]
    fn signatures() {
        assert_eq!(looks_like_header(b"PROXY TCP4"), Some(true));
        assert_eq!(looks_like_header(b"PRO"), None);
        assert_eq!(looks_like_header(b"PROPFIND"), Some(false));
        assert_eq!(looks_like_header(b"\r\n\r\n"), None);
        assert_eq!(looks_like_header(&V2_SIGNATURE), Some(true));
        assert_eq!(looks_like_header(b"\r\nGET"), Some(false));
        assert_eq!(looks_like_header(&[0x16, 3, 1]), Some(false));
    }
}
