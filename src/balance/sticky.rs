//! Sticky sessions: the cookies that keep a client on one target of a group (`lb_cookie`,
//! `app_cookie`) or on one group of a weighted forward (target group stickiness).
//!
//! A cookie holds what it points at (a target's address, or a group's id) and an expiry,
//! sealed with AES-256-GCM (aws-lc-rs) under `server.cookie_key` — or a key drawn once per
//! process when none is set — with the cookie's name as associated data: no client can read
//! which target it is on, forge another, or move a cookie to another group; replicas that share
//! the key honour each other's cookies. A cookie that does not open (tampered, expired, another
//! key, another group) is ignored, never an error: the request is balanced as any other and the
//! cookie issued again.
//!
//! Names (ALB's are AWSALB, AWSALBCORS, AWSALBAPP-n and AWSALBTG): `PILOTFISH-<id>` with its
//! CORS twin `PILOTFISHCORS-<id>` for `lb_cookie`, `PILOTFISHAPP-<id>` for `app_cookie`,
//! `PILOTFISHTG-<id>` for a weighted forward, where `<id>` is 8 hex digits of the SHA-256 of
//! the group's name (of the forward's groups' names): stable across reloads and replicas, and
//! one group's cookie never clobbers another's. No I/O here.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::group::TargetSet;
use super::Target;

/// The sealing key of every stickiness cookie of a snapshot.
#[derive(Clone)]
pub struct CookieSealer(Arc<LessSafeKey>);

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSealer(<key>)")
    }
}

/// The key drawn for this process when `cookie_key` is not set: the same for every snapshot, so
/// a reload keeps the sessions.
static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();

impl CookieSealer {
    /// A sealer with `key`, or with this process's own key.
    pub fn new(key: Option<&[u8; 32]>) -> CookieSealer {
        let key = key.unwrap_or_else(|| {
            PROCESS_KEY.get_or_init(|| {
                let mut k = [0u8; 32];
                aws_lc_rs::rand::fill(&mut k).expect("the system random source works");
                k
            })
        });
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is an AES-256 key");
        CookieSealer(Arc::new(LessSafeKey::new(unbound)))
    }

    /// The cookie value for `payload`, sealed under `name`: base64 of nonce, ciphertext, tag.
    fn seal(&self, name: &str, payload: &[u8; PAYLOAD]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
        let mut buf = Vec::with_capacity(NONCE_LEN + PAYLOAD + 16);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(payload);
        let mut body = buf.split_off(NONCE_LEN);
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut body)
            .expect("sealing a short payload cannot fail");
        buf.extend_from_slice(&body);
        aws_smithy_types::base64::encode(&buf)
    }

    /// [`CookieSealer::open`] through the connection's `memo`: the value its client sent last
    /// time, if it is this one under this key and name, is not opened again.
    fn open_memo(&self, name: &str, value: &[u8], memo: &mut CookieMemo) -> Option<[u8; PAYLOAD]> {
        if let Some(m) = &memo.0 {
            if Arc::ptr_eq(&m.key, &self.0) && *m.name == *name && m.value == value {
                return Some(m.payload);
            }
        }
        let payload = self.open(name, value)?;
        match &mut memo.0 {
            Some(m) => {
                m.key.clone_from(&self.0);
                if *m.name != *name {
                    m.name = name.into();
                }
                m.value.clear();
                m.value.extend_from_slice(value);
                m.payload = payload;
            }
            None => {
                let m = Memo { key: self.0.clone(), name: name.into(), value: value.to_vec(), payload };
                memo.0 = Some(Box::new(m));
            }
        }
        Some(payload)
    }

    /// The payload of a cookie value sealed under `name`, or None.
    fn open(&self, name: &str, value: &[u8]) -> Option<[u8; PAYLOAD]> {
        if value.len() > 256 {
            return None;
        }
        let mut raw = aws_smithy_types::base64::decode(std::str::from_utf8(value).ok()?).ok()?;
        if raw.len() != NONCE_LEN + PAYLOAD + 16 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).ok()?;
        let plain = self.0.open_in_place(nonce, Aad::from(name.as_bytes()), &mut raw[NONCE_LEN..]).ok()?;
        plain.try_into().ok()
    }
}

/// The last stickiness cookie a connection's client sent that opened, and what it said. A
/// keep-alive client sends the same cookie with every request; opening it (base64, AES-GCM, an
/// allocation) costs ~1 800 instructions, comparing it with the one opened before a few dozen.
/// Only a value that opened is kept, with the key that opened it (held, so it cannot be freed
/// and its address reused by another key), and its expiry is still checked on every request.
#[derive(Default)]
pub struct CookieMemo(Option<Box<Memo>>);

struct Memo {
    key: Arc<LessSafeKey>,
    name: Box<str>,
    value: Vec<u8>,
    payload: [u8; PAYLOAD],
}

/// Payload: version, expiry (Unix seconds), then an address (family, 16 bytes, port) or a
/// group id.
const PAYLOAD: usize = 1 + 8 + 1 + 16 + 2;
const VERSION: u8 = 1;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn payload(expiry: u64, addr: SocketAddr) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[0] = VERSION;
    p[1..9].copy_from_slice(&expiry.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            p[9] = 4;
            p[10..14].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            p[9] = 6;
            p[10..26].copy_from_slice(&ip.octets());
        }
    }
    p[26..28].copy_from_slice(&addr.port().to_be_bytes());
    p
}

fn read_payload(p: &[u8; PAYLOAD]) -> Option<(u64, SocketAddr)> {
    if p[0] != VERSION {
        return None;
    }
    let expiry = u64::from_be_bytes(p[1..9].try_into().ok()?);
    let ip = match p[9] {
        4 => IpAddr::from(<[u8; 4]>::try_from(&p[10..14]).ok()?),
        6 => IpAddr::from(<[u8; 16]>::try_from(&p[10..26]).ok()?),
        _ => return None,
    };
    Some((expiry, SocketAddr::new(ip, u16::from_be_bytes([p[26], p[27]]))))
}

/// 8 hex digits of the SHA-256 of `name`.
pub fn cookie_id(name: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` among a request's `Cookie` field values. Each `name=value` pair
/// is tested by its prefix and skipped with a SIMD search for the next `;`: a sticky request's
/// cookie header is mostly the sealed value, and a byte-wise split cost ~700 instructions.
pub fn find_cookie<'a>(values: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    values.iter().find_map(|v| {
        let mut rest: &'a [u8] = v;
        loop {
            rest = rest.trim_ascii_start();
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let pair = &rest[..end];
            if let Some(value) = pair.strip_prefix(name).and_then(|r| r.trim_ascii_start().strip_prefix(b"=")) {
                return Some(value.trim_ascii());
            }
            rest = rest.get(end + 1..)?;
        }
    })
}

/// How a group keeps its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKind {
    /// pilotfish's own cookie.
    LbCookie,
    /// Follows the application's cookie of this name.
    AppCookie(Box<str>),
}

/// A target group's stickiness.
#[derive(Debug, Clone)]
pub struct Stickiness {
    pub kind: StickyKind,
    pub duration: Duration,
    /// `PILOTFISH-<id>` or `PILOTFISHAPP-<id>`.
    name: Box<str>,
    /// `PILOTFISHCORS-<id>` (lb_cookie only).
    cors: Option<Box<str>>,
    sealer: CookieSealer,
}

/// What a request's cookies say about its target.
#[derive(Debug, Default)]
pub struct Session {
    /// The target the cookie names, when it is in the group and healthy.
    pub target: Option<Arc<Target>>,
    /// The cookie's expiry (Unix seconds), when it opened.
    expiry: Option<u64>,
}

impl Stickiness {
    /// The stickiness of group `group`.
    pub fn new(group: &str, kind: StickyKind, duration: Duration, sealer: CookieSealer) -> Stickiness {
        let id = cookie_id(group);
        let (name, cors) = match kind {
            StickyKind::LbCookie => (format!("PILOTFISH-{id}"), Some(format!("PILOTFISHCORS-{id}").into())),
            StickyKind::AppCookie(_) => (format!("PILOTFISHAPP-{id}"), None),
        };
        Stickiness { kind, duration, name: name.into(), cors, sealer }
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// The session a request's `Cookie` values name in `set`: its target when the cookie opens,
    /// has not expired, names a target of the set that takes traffic (healthy, not draining),
    /// and, for `app_cookie`, the application's cookie is sent too.
    pub fn session(&self, cookies: &[&[u8]], set: &TargetSet, memo: Option<&mut CookieMemo>) -> Session {
        if let StickyKind::AppCookie(app) = &self.kind {
            if find_cookie(cookies, app).is_none() {
                return Session::default();
            }
        }
        let value = find_cookie(cookies, &self.name).map(|v| (v, &*self.name)).or_else(|| {
            let cors = self.cors.as_deref()?;
            find_cookie(cookies, cors).map(|v| (v, cors))
        });
        let opened = value.and_then(|(v, name)| match memo {
            Some(memo) => self.sealer.open_memo(name, v, memo),
            None => self.sealer.open(name, v),
        });
        let Some((expiry, addr)) = opened.as_ref().and_then(read_payload) else {
            return Session::default();
        };
        if expiry <= now_secs() {
            return Session::default();
        }
        let target = set.find(addr).filter(|t| t.is_routable()).cloned();
        Session { target, expiry: Some(expiry) }
    }

    /// The `Set-Cookie` values to send after `served` answered a request of `session` (none
    /// when the cookie in hand is still good for most of its duration). `app_set`: the
    /// response sets the application's cookie (`app_cookie` issues its own only then, or to
    /// move the session to another target).
    pub fn set_cookies(&self, session: &Session, served: &Target, secure: bool, app_set: bool) -> Vec<String> {
        let moved = session.target.as_ref().is_none_or(|t| t.addr != served.addr);
        let now = now_secs();
        let secs = self.duration.as_secs().max(1);
        let stale = session.expiry.is_none_or(|e| e.saturating_sub(now) < secs * 3 / 4);
        let issue = match self.kind {
            StickyKind::LbCookie => moved || stale,
            StickyKind::AppCookie(_) => app_set || (session.expiry.is_some() && (moved || stale)),
        };
        if !issue {
            return Vec::new();
        }
        let value = self.sealer.seal(&self.name, &payload(now + secs, served.addr));
        let secure_attr = if secure { "; Secure" } else { "" };
        let mut out = vec![format!("{}={value}; Max-Age={secs}; Path=/; HttpOnly{secure_attr}", self.name)];
        if let Some(cors) = &self.cors {
            let value = self.sealer.seal(cors, &payload(now + secs, served.addr));
            out.push(format!("{cors}={value}; Max-Age={secs}; Path=/; HttpOnly; SameSite=None; Secure"));
        }
        out
    }

    /// Whether a response's `Set-Cookie` value sets the application's cookie.
    pub fn sets_app_cookie(&self, set_cookie: &[u8]) -> bool {
        match &self.kind {
            StickyKind::AppCookie(app) => {
                let n = set_cookie.iter().position(|&b| b == b'=').map_or(set_cookie, |i| &set_cookie[..i]);
                n.trim_ascii() == app.as_bytes()
            }
            StickyKind::LbCookie => false,
        }
    }
}

/// Target group stickiness of a weighted forward: which of its groups a client stays on.
#[derive(Debug, Clone)]
pub struct GroupStickiness {
    pub duration: Duration,
    /// `PILOTFISHTG-<id>`.
    name: Box<str>,
    sealer: CookieSealer,
}

/// The group id a forward's cookie carries, in the address slot of the payload.
fn group_addr(group: &str) -> SocketAddr {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, group.as_bytes());
    let b: [u8; 16] = d.as_ref()[..16].try_into().expect("a SHA-256 digest has 32 bytes");
    SocketAddr::new(IpAddr::from(b), 0)
}

impl GroupStickiness {
    /// The stickiness of a forward over `groups`.
    pub fn new(groups: &[&str], duration: Duration, sealer: CookieSealer) -> GroupStickiness {
        let name = format!("PILOTFISHTG-{}", cookie_id(&groups.join("\n")));
        GroupStickiness { duration, name: name.into(), sealer }
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// Which of `groups` (by name) the request's cookie names, if it opens and has not expired.
    pub fn group(&self, cookies: &[&[u8]], groups: &[&str]) -> Option<usize> {
        let v = find_cookie(cookies, &self.name)?;
        let (expiry, addr) = read_payload(&self.sealer.open(&self.name, v)?)?;
        if expiry <= now_secs() {
            return None;
        }
        groups.iter().position(|g| group_addr(g) == addr)
    }

    /// The `Set-Cookie` value that keeps the client on `group`.
    pub fn set_cookie(&self, group: &str, secure: bool) -> String {
        let secs = self.duration.as_secs().max(1);
        let value = self.sealer.seal(&self.name, &payload(now_secs() + secs, group_addr(group)));
        let secure_attr = if secure { "; Secure" } else { "" };
        format!("{}={value}; Max-Age={secs}; Path=/; HttpOnly{secure_attr}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::group::TargetSpec;
    use crate::balance::TargetState;

    fn set() -> TargetSet {
        let specs: Vec<_> =
            [1u16, 2].iter().map(|p| TargetSpec { addr: SocketAddr::from(([127, 0, 0, 1], *p)), weight: 1 }).collect();
        TargetSet::build(&specs, TargetState::Healthy)
    }

    fn cookie_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_cookie_opens_only_under_its_key_and_name_and_until_it_expires() {
        let (s, targets) = (
            Stickiness::new("g", StickyKind::LbCookie, Duration::from_secs(60), CookieSealer::new(Some(&[7; 32]))),
            set(),
        );
        let t = &targets.targets()[1];
        // One memo for the whole test, as one connection's: nothing it remembers opens a cookie
        // that would not open on its own.
        let mut memo = CookieMemo::default();
        let issued = s.set_cookies(&Session::default(), t, true, false);
        assert_eq!(issued.len(), 2, "the cookie and its CORS twin");
        assert!(
            issued[0].starts_with(&format!("PILOTFISH-{}=", cookie_id("g")))
                && issued[0].ends_with("; Max-Age=60; Path=/; HttpOnly; Secure")
        );
        assert!(issued[1].contains("SameSite=None; Secure"));
        for c in &issued {
            let header = format!("a=1; {}; b=2", cookie_of(c));
            let got = s.session(&[header.as_bytes()], &targets, Some(&mut memo));
            assert_eq!(got.target.as_ref().map(|t| t.addr), Some(t.addr), "{c}");
            let again = s.session(&[header.as_bytes()], &targets, Some(&mut memo));
            assert_eq!(again.target.map(|t| t.addr), Some(t.addr), "the remembered cookie: {c}");
            // A fresh cookie is not issued again; a session on another target is.
            assert!(s.set_cookies(&got, t, true, false).is_empty());
            assert_eq!(s.set_cookies(&got, &targets.targets()[0], true, false).len(), 2);
        }
        let cookie = cookie_of(&issued[0]);
        // Another key, another group, a flipped byte: ignored.
        let other_key =
            Stickiness::new("g", StickyKind::LbCookie, Duration::from_secs(60), CookieSealer::new(Some(&[8; 32])));
        assert!(other_key.session(&[cookie.as_bytes()], &targets, Some(&mut memo)).target.is_none());
        let other_group =
            Stickiness::new("h", StickyKind::LbCookie, Duration::from_secs(60), CookieSealer::new(Some(&[7; 32])));
        let moved = cookie.replace(&cookie_id("g"), &cookie_id("h"));
        assert!(
            other_group.session(&[moved.as_bytes()], &targets, Some(&mut memo)).target.is_none(),
            "sealed under its own name"
        );
        let (name, value) = cookie.split_once('=').unwrap();
        let mut raw = aws_smithy_types::base64::decode(value).unwrap();
        raw[20] ^= 1;
        let tampered = format!("{name}={}", aws_smithy_types::base64::encode(&raw));
        assert!(s.session(&[tampered.as_bytes()], &targets, Some(&mut memo)).target.is_none());
        // An expired payload, sealed properly: ignored too.
        let old = s.sealer.seal(&s.name, &payload(now_secs() - 1, t.addr));
        assert!(s.session(&[format!("{name}={old}").as_bytes()], &targets, Some(&mut memo)).target.is_none());
        // A target that is no longer healthy is not kept.
        t.set_state(TargetState::Draining, crate::balance::target::Reason::DeregistrationInProgress);
        assert!(s.session(&[cookie.as_bytes()], &targets, Some(&mut memo)).target.is_none());
    }

    #[test]
    fn app_stickiness_needs_the_applications_cookie_and_issues_when_it_is_set() {
        let s = Stickiness::new(
            "g",
            StickyKind::AppCookie("SESSIONID".into()),
            Duration::from_secs(3600),
            CookieSealer::new(None),
        );
        let targets = set();
        let t = &targets.targets()[0];
        let mut memo = CookieMemo::default();
        assert!(s.set_cookies(&Session::default(), t, false, false).is_empty(), "no app cookie set: nothing");
        let issued = s.set_cookies(&Session::default(), t, false, true);
        assert_eq!(issued.len(), 1);
        assert!(issued[0].starts_with("PILOTFISHAPP-") && !issued[0].contains("Secure"));
        let ours = cookie_of(&issued[0]);
        assert!(s.session(&[ours.as_bytes()], &targets, Some(&mut memo)).target.is_none(), "without SESSIONID");
        let both = format!("SESSIONID=abc; {ours}");
        assert_eq!(s.session(&[both.as_bytes()], &targets, Some(&mut memo)).target.unwrap().addr, t.addr);
        assert!(s.sets_app_cookie(b"SESSIONID=xyz; Path=/") && !s.sets_app_cookie(b"SESSIONIDX=1"));
    }

    #[test]
    fn group_stickiness_names_one_of_the_forwards_groups() {
        let g = GroupStickiness::new(&["blue", "green"], Duration::from_secs(60), CookieSealer::new(None));
        let c = cookie_of(&g.set_cookie("green", false));
        assert_eq!(g.group(&[c.as_bytes()], &["blue", "green"]), Some(1));
        assert_eq!(g.group(&[c.as_bytes()], &["blue"]), None, "a group no longer in the forward");
        assert!(c.starts_with("PILOTFISHTG-"));
        assert_eq!(find_cookie(&[&b"x=1;y = 2 ; z"[..]], "y"), Some(&b"2"[..]));
    }

    #[test]
    fn a_cookie_is_found_by_its_whole_name_in_any_field() {
        let fields: [&[u8]; 2] = [b"yy=0; xy=1;;", b" a=; y=3;y=4"];
        assert_eq!(find_cookie(&fields, "y"), Some(&b"3"[..]), "the first pair named y, not yy or xy");
        assert_eq!(find_cookie(&fields, "a"), Some(&b""[..]));
        assert_eq!(find_cookie(&fields, "xy"), Some(&b"1"[..]));
        for absent in ["x", "z", "yy=", ""] {
            assert_eq!(find_cookie(&fields, absent), None, "{absent:?}");
        }
        assert_eq!(find_cookie(&[], "y"), None);
        assert_eq!(find_cookie(&[b"y"], "y"), None, "a pair without '=' has no value");
    }
}
