//! Validation and compilation: [`file::FileConfig`] → [`Snapshot`], in two steps.
//!
//! 1. Each section is checked and turned into its typed value in one pass, one file per
//!    section: `server` (`[server]`, `[access_log]`, `[aws]`, `[cloudwatch]`), `tls`
//!    (`[[certificates]]`, listeners' server configurations, groups' client configurations),
//!    `target_group`, `listener`, `rule`. Every value is parsed once, where it is checked;
//!    an element with an error yields nothing (its errors are in the diagnostics).
//! 2. `resolve` checks the names elements give each other (a rule's listeners, a forward's
//!    target groups, a listener's certificates) at the key that gives them, and turns them into
//!    positions; only then, when nothing failed, is the [`Snapshot`] built (target groups take
//!    over the running groups' targets, metrics handles are made).
//!
//! Every problem is collected, with its span, before anything is built, so one `check` run
//! reports all mistakes, and a failed reload leaves the running snapshot untouched. A name that
//! an element declares counts as known even when that element has errors (or could not be read at
//! all: [`file::FileConfig::unreadable`]), so one mistake is reported once.

mod jwt;
mod listener;
mod rewrite;
mod rule;
mod server;
mod target_group;
mod tls;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::file::Spanned;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::json;

use super::file::{self, FileConfig, Forward};
use super::material::Material;
use super::snapshot::*;
use super::{Diagnostics, Severity, SourceMap};
use crate::auth::jwks::KeySet;
use crate::auth::jwt::JwtCheck;
use crate::balance::sticky::{CookieSealer, GroupStickiness, Stickiness};
use crate::balance::TargetGroup;
use crate::routing::rewrite::HeaderEdits;
use crate::routing::{Router, Rule};
use crate::telemetry::metrics::Metrics;
use listener::ListenerDef;
use rule::{ActionDef, RuleDef};
use target_group::{GroupDef, Targets};

pub use rule::parse_cidr;
pub use target_group::parse_matcher;

/// What a compile needs besides the file itself.
pub struct CompileInput<'a> {
    /// Name of the file in messages (its path).
    pub name: &'a str,
    pub text: &'a str,
    /// The running snapshot, whose targets are reused by address.
    pub previous: Option<&'a Snapshot>,
    pub metrics: &'a Metrics,
    pub generation: u64,
    /// Relative certificate and CA paths are resolved against this (the config file's folder).
    pub base_dir: Option<&'a Path>,
    /// What was fetched from AWS for this text ([`super::material::wanted`]).
    pub material: &'a Material,
}

/// ALB's limit on target and forward weights, which pilotfish follows so configs move between
/// the two.
const MAX_WEIGHT: u32 = 999;

/// The diagnostics of one compile, and what checks need to locate and read files.
struct Ctx<'a> {
    map: SourceMap<'a>,
    diags: Vec<super::ConfigError>,
    base_dir: Option<&'a Path>,
}

impl Ctx<'_> {
    fn path(&self, p: &str) -> PathBuf {
        match self.base_dir {
            Some(base) if Path::new(p).is_relative() => base.join(p),
            _ => PathBuf::from(p),
        }
    }

    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.map.diag(span, Severity::Error, msg);
        self.diags.push(d);
    }

    fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.map.diag(span, Severity::Warning, msg);
        self.diags.push(d);
    }

    /// A mark for [`Ctx::clean_since`].
    fn mark(&self) -> usize {
        self.diags.len()
    }

    /// Whether no error was reported since `mark`.
    fn clean_since(&self, mark: usize) -> bool {
        !self.diags[mark..].iter().any(|d| d.severity == Severity::Error)
    }
}

/// What was fetched from AWS for `src`, for `what` at `at`: a stale copy is used with a warning
/// (`stale` says how), a failed or missing fetch is an error (None).
fn fetched<'m, T>(
    cx: &mut Ctx<'_>,
    at: Range<usize>,
    what: &str,
    src: &impl std::fmt::Display,
    got: Option<&'m super::material::Fetched<T>>,
    stale: &str,
) -> Option<&'m Arc<T>> {
    use super::material::Fetched;
    match got {
        Some(Fetched::Fresh(v)) => Some(v),
        Some(Fetched::Stale(v, e)) => {
            cx.warn(at, format!("{what}: {src}: {e}; {stale}"));
            Some(v)
        }
        Some(Fetched::Failed(e)) => {
            cx.err(at, format!("{what}: {src}: {e}"));
            None
        }
        None => {
            cx.err(at, format!("{what}: {src} was not fetched"));
            None
        }
    }
}

/// Parses, validates and compiles a configuration. On success returns the snapshot and any warnings.
pub fn compile(input: CompileInput<'_>) -> Result<(Snapshot, Diagnostics), Diagnostics> {
    let map = SourceMap::new(input.name, input.text);
    let (cfg, diags) = super::parse(&map, input.text)?;
    let mut cx = Ctx { map, diags, base_dir: input.base_dir };
    let sections = server::compile(&mut cx, &cfg, input.material);
    if let (Some(prev), Some(s)) = (input.previous, &sections) {
        restart_only(&mut cx, &cfg.server, &s.settings, &prev.server);
    }
    let certs = tls::certificates(&mut cx, &cfg.certificates, input.material);
    let groups = target_group::compile_all(&mut cx, &cfg.target_groups, cfg.cloudwatch.is_some());
    let listeners = listener::compile_all(&mut cx, &cfg.listeners, input.material);
    let rules = rule::compile_all(&mut cx, &cfg.rules);
    if cfg.listeners.is_empty() {
        cx.warn(0..0, "no [[listeners]]: pilotfish will serve nothing but its admin API");
    }
    let plan = resolve(&mut cx, &cfg, &certs, groups, listeners, rules);
    cx.diags.sort_by_key(|d| (d.line, d.col));
    // (A section or element yields nothing only with an error, so both are Some here when no
    // error was reported.)
    match (sections, plan) {
        (Some(sections), Some(plan)) if cx.clean_since(0) => {
            Ok((build(&input, &cfg, sections, &certs, plan), Diagnostics(cx.diags)))
        }
        _ => Err(Diagnostics(cx.diags)),
    }
}

/// Warns about `jwt` rules on plain http listeners: bearer tokens would cross the network in
/// clear (ALB verifies tokens on HTTPS listeners only). Not an error: TLS may end in front.
fn cleartext_tokens(cx: &mut Ctx<'_>, cfg: &FileConfig) {
    for r in cfg.rules.iter().map(Spanned::get_ref) {
        let Some(jwt) = &r.jwt else { continue };
        for l in r.listeners.get_ref() {
            let plain = cfg
                .listeners
                .iter()
                .map(Spanned::get_ref)
                .any(|x| x.name.get_ref() == l.get_ref() && *x.protocol.get_ref() == file::ListenerProtocol::Http);
            if plain {
                cx.warn(jwt.span(), format!("rule {:?}: jwt on http listener {:?}: bearer tokens travel in clear text unless TLS ends in front of pilotfish", r.name.get_ref(), l.get_ref()));
            }
        }
    }
}

/// Settings fixed at start-up (the worker threads, the admin socket) that a reload changes:
/// each is a warning at its key, and the running value stays in force (and is what `/config`
/// shows) until the next start. (`max_connections` is applied live.)
fn restart_only(cx: &mut Ctx<'_>, s: &file::Server, new: &ServerSettings, prev: &ServerSettings) {
    // (A key left out is its default, reported at the top of the file.)
    if new.worker_threads != prev.worker_threads {
        let count = |n: usize| if n == 0 { "0 (one per core)".to_string() } else { n.to_string() };
        let msg = format!(
            "worker_threads = {} takes effect at the next start; {} stay in force",
            count(new.worker_threads),
            count(prev.worker_threads)
        );
        cx.warn(s.worker_threads.span(), msg);
    }
    if new.admin_bind != prev.admin_bind {
        let msg = format!(
            "admin_bind = {} takes effect at the next start; the admin API stays on {}",
            new.admin_bind, prev.admin_bind
        );
        cx.warn(s.admin_bind.span(), msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Resolving names.

/// The names one kind of element declares: where each is, or that it could not be read.
struct Names<'a> {
    at: HashMap<&'a str, usize>,
    unreadable: HashSet<&'a str>,
}

/// What a name refers to.
enum Lookup {
    /// The element at this position.
    At(usize),
    /// An element that could not be read (its errors are reported already).
    Unreadable,
    Unknown,
}

impl<'a> Names<'a> {
    /// The valid names of `names` (in element order; the first of duplicates) and `unreadable`.
    fn new(names: impl Iterator<Item = &'a str>, unreadable: &'a [String]) -> Self {
        let mut at = HashMap::new();
        for (i, n) in names.enumerate().filter(|(_, n)| valid_name(n)) {
            at.entry(n).or_insert(i);
        }
        Names { at, unreadable: unreadable.iter().map(String::as_str).collect() }
    }

    fn lookup(&self, name: &str) -> Lookup {
        match self.at.get(name) {
            Some(&i) => Lookup::At(i),
            None if self.unreadable.contains(name) => Lookup::Unreadable,
            None => Lookup::Unknown,
        }
    }
}

/// Everything checked and resolved, ready to build. Positions index `groups` and `listeners`.
struct Plan {
    groups: Vec<GroupDef>,
    listeners: Vec<ListenerPlan>,
    rules: Vec<RulePlan>,
}

struct ListenerPlan {
    def: ListenerDef,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The default action's forward arms: group position and weight (zero weights left out).
    arms: Vec<(usize, u32)>,
}

struct RulePlan {
    def: RuleDef,
    /// The positions of the rule's listeners.
    listeners: Vec<usize>,
    arms: Vec<(usize, u32)>,
}

/// Checks every name an element gives another (each at the key that gives it), warns about
/// target groups nothing uses and rule hosts no certificate covers, and resolves names to
/// positions. None when anything failed (always with an error reported).
fn resolve(
    cx: &mut Ctx<'_>,
    cfg: &FileConfig,
    certs: &tls::Certificates,
    groups: Vec<Option<GroupDef>>,
    listeners: Vec<Option<ListenerDef>>,
    rules: Vec<Option<RuleDef>>,
) -> Option<Plan> {
    let group_names =
        Names::new(cfg.target_groups.iter().map(|g| g.get_ref().name.get_ref().as_str()), &cfg.unreadable);
    let listener_names = Names::new(cfg.listeners.iter().map(|l| l.get_ref().name.get_ref().as_str()), &cfg.unreadable);
    let cert_names: HashSet<&str> = cfg
        .certificates
        .iter()
        .map(|c| c.get_ref().name.get_ref().as_str())
        .chain(cfg.unreadable.iter().map(String::as_str))
        .collect();

    let mut listener_plans = Vec::with_capacity(listeners.len());
    for (l, def) in cfg.listeners.iter().zip(listeners) {
        let l = l.get_ref();
        let name = l.name.get_ref();
        if let Some(list) = l.certificates.as_ref().filter(|_| *l.protocol.get_ref() == file::ListenerProtocol::Https) {
            for c in list.get_ref() {
                if !cert_names.contains(c.as_str()) {
                    cx.err(list.span(), format!("listener {name:?} names unknown certificate {c:?}"));
                }
            }
        }
        let forward = l.default_action.as_ref().and_then(|a| a.get_ref().forward.as_ref());
        let arms = forward_arms(cx, &group_names, "default_action", forward);
        let tls = def.as_ref().and_then(|d| d.tls.as_ref()).map(|t| tls::listener_config(cx, certs, name, t));
        listener_plans
            .push(def.zip(arms).and_then(|(def, arms)| Some(ListenerPlan { def, tls: optional(tls)?, arms })));
    }

    let mut priorities: HashMap<(&str, u32), &str> = HashMap::new();
    let mut rule_plans = Vec::with_capacity(rules.len());
    for (r, def) in cfg.rules.iter().zip(rules) {
        let r = r.get_ref();
        let name = r.name.get_ref();
        let prio = *r.priority.get_ref();
        let mut on = Vec::new();
        let mut complete = true;
        for l in r.listeners.get_ref() {
            let lookup = listener_names.lookup(l.get_ref());
            match lookup {
                Lookup::Unknown => {
                    cx.err(l.span(), format!("rule {name:?} names unknown listener {:?}", l.get_ref()));
                    continue;
                }
                Lookup::Unreadable => complete = false,
                Lookup::At(i) => on.push(i),
            }
            if let Some(other) = priorities.insert((l.get_ref(), prio), name) {
                cx.err(
                    r.priority.span(),
                    format!("priority {prio} on listener {:?} is already used by rule {other:?}", l.get_ref()),
                );
            }
        }
        let arms = forward_arms(cx, &group_names, &format!("rule {name:?}"), r.forward.as_ref());
        rule_plans.push(def.zip(arms).filter(|_| complete).map(|(def, arms)| RulePlan { def, listeners: on, arms }));
    }

    tls::uncovered_hosts(cx, certs, cfg);
    cleartext_tokens(cx, cfg);
    unused_groups(cx, cfg);

    Some(Plan {
        groups: groups.into_iter().collect::<Option<_>>()?,
        listeners: listener_plans.into_iter().collect::<Option<_>>()?,
        rules: rule_plans.into_iter().collect::<Option<_>>()?,
    })
}

/// The arms of `forward` (None: a target group it names is unknown, reported at the key, or
/// could not be read; no forward: no arms).
fn forward_arms(
    cx: &mut Ctx<'_>,
    groups: &Names<'_>,
    owner: &str,
    forward: Option<&Spanned<Forward>>,
) -> Option<Vec<(usize, u32)>> {
    let Some(f) = forward else { return Some(Vec::new()) };
    let named: Vec<(&str, u32)> = f.get_ref().arms();
    let mut arms = Vec::with_capacity(named.len());
    let mut complete = true;
    for (g, weight) in named {
        match groups.lookup(g) {
            Lookup::At(i) => arms.extend((weight > 0).then_some((i, weight))),
            Lookup::Unreadable => complete = false,
            Lookup::Unknown => {
                cx.err(f.span(), format!("{owner} forwards to unknown target group {g:?}"));
                complete = false;
            }
        }
    }
    complete.then_some(arms)
}

/// Warns about target groups no rule or default action forwards to, and groups with no targets.
fn unused_groups(cx: &mut Ctx<'_>, cfg: &FileConfig) {
    let used: HashSet<&str> = cfg
        .rules
        .iter()
        .filter_map(|r| r.get_ref().forward.as_ref())
        .chain(cfg.listeners.iter().filter_map(|l| l.get_ref().default_action.as_ref()?.get_ref().forward.as_ref()))
        .flat_map(|f| f.get_ref().arms().into_iter().map(|(g, _)| g))
        .collect();
    for tg in &cfg.target_groups {
        let tg = tg.get_ref();
        if !used.contains(tg.name.get_ref().as_str()) {
            cx.warn(
                tg.name.span(),
                format!("target group {:?} is not used by any rule or default action", tg.name.get_ref()),
            );
        }
        if tg.targets.is_empty() && tg.discovery.is_none() {
            cx.warn(
                tg.name.span(),
                format!("target group {:?} has no targets: requests to it get 503", tg.name.get_ref()),
            );
        }
    }
}

/// An optional key's compiled value: `Some(None)` when the key is absent, None when it had an
/// error (`Some(None)` from `Option::transpose` would hide the error).
fn optional<T>(compiled: Option<Option<T>>) -> Option<Option<T>> {
    compiled.map_or(Some(None), |v| v.map(Some))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks the name of an element of `kind` ("listener", "rule", …): its characters, and that no
/// earlier element of the kind has it (`seen`).
fn check_name<'a>(cx: &mut Ctx<'_>, kind: &str, name: &'a Spanned<String>, seen: &mut HashSet<&'a str>) {
    let n = name.get_ref();
    if !valid_name(n) {
        cx.err(name.span(), format!("bad {kind} name {n:?}: use letters, digits, '-', '_' and '.'"));
    } else if !seen.insert(n.as_str()) {
        cx.err(name.span(), format!("duplicate {kind} name {n:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Building (everything is checked and resolved here).

fn build(
    input: &CompileInput<'_>,
    cfg: &FileConfig,
    sections: server::Sections,
    certs: &tls::Certificates,
    plan: Plan,
) -> Snapshot {
    let metrics = input.metrics;
    let mut server = sections.settings;
    if let Some(prev) = input.previous {
        // Fixed at start-up (see `restart_only`): the running values stay in force.
        server.worker_threads = prev.server.worker_threads;
        server.admin_bind = prev.server.admin_bind;
    }

    let sealer = CookieSealer::new(server.cookie_key.as_ref().map(|k| &k.0));
    let mut discovery = Vec::new();
    let mut autoscaling = Vec::new();
    let mut upstreams: Vec<Upstream> = plan
        .groups
        .into_iter()
        .map(|g| {
            let prev = input.previous.and_then(|p| p.target_group(&g.name));
            let specs = match g.targets {
                Targets::Static(specs) => specs,
                Targets::Discovered(spec) => {
                    discovery.push((g.name.clone(), spec));
                    prev.map(|g| g.targets().registered_specs()).unwrap_or_default()
                }
            };
            if let Some(a) = g.autoscaling {
                autoscaling.push((g.name.clone(), a));
            }
            let sticky =
                g.stickiness.map(|(kind, duration)| Arc::new(Stickiness::new(&g.name, kind, duration, sealer.clone())));
            let group = Arc::new(TargetGroup::new(g.name, g.settings, &specs, prev.map(|g| &**g)));
            Upstream { group, transport: Arc::new(g.transport), sticky }
        })
        .collect();

    // Each rule's token check, once for all its listeners; key sets are shared by the rules that
    // name the same one, and taken over from the running configuration.
    let mut key_sets: Vec<Arc<KeySet>> = Vec::new();
    let previous_sets = input.previous.map_or(&[][..], |p| &p.jwks[..]);
    let jwt_checks: Vec<Option<Arc<JwtCheck>>> = plan
        .rules
        .iter()
        .map(|r| {
            let d = r.def.jwt.as_ref()?;
            let keys = match key_sets.iter().find(|k| k.source == d.source) {
                Some(k) => k.clone(),
                None => {
                    let stats = Some(metrics.jwks_stats());
                    let k = match KeySet::reuse(previous_sets, &d.source) {
                        Some(k) => k,
                        None => match previous_sets.iter().find(|k| k.source.url == d.source.url) {
                            Some(old) => Arc::new(KeySet::seeded(d.source.clone(), d.tls.clone(), stats, old)),
                            None => Arc::new(KeySet::new(d.source.clone(), d.tls.clone(), stats)),
                        },
                    };
                    key_sets.push(k.clone());
                    k
                }
            };
            Some(Arc::new(JwtCheck {
                issuer: d.issuer.clone(),
                audience: d.audience.clone(),
                claims: d.claims.clone(),
                header: d.header.clone(),
                keys,
                stats: metrics.jwt(&r.def.name),
            }))
        })
        .collect();

    // Trust stores and CRLs kept in AWS, each with the shortest refresh that names it.
    let mut trust_sources: Vec<(crate::config::material::AwsSecret, std::time::Duration)> = Vec::new();
    for m in plan.listeners.iter().filter_map(|l| l.def.tls.as_ref()?.mtls.as_ref()) {
        for src in &m.sources {
            match trust_sources.iter_mut().find(|(s, _)| s == src) {
                Some((_, r)) => *r = (*r).min(m.refresh),
                None => trust_sources.push((src.clone(), m.refresh)),
            }
        }
    }

    let listeners: Vec<Arc<ListenerConfig>> = plan
        .listeners
        .into_iter()
        .enumerate()
        .map(|(i, lp)| {
            let l = lp.def;
            let listener_edits = l.response_edits.map(Arc::new);
            let response = |rule: Option<&HeaderEdits>| match (&listener_edits, rule) {
                (Some(l), Some(r)) => Some(Arc::new(l.then(r))),
                (None, Some(r)) => Some(Arc::new(r.clone())),
                (l, None) => l.clone(),
            };
            let rules = plan
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.listeners.contains(&i))
                .map(|(ri, r)| Rule {
                    name: r.def.name.clone(),
                    priority: r.def.priority,
                    conditions: r.def.conditions.clone(),
                    action: Routed {
                        action: action(metrics, &l.name, &upstreams, &r.def.action, &r.arms, &sealer),
                        request: r.def.request.clone().map(Arc::new),
                        response: response(r.def.response.as_ref()),
                        jwt: jwt_checks[ri].clone(),
                    },
                })
                .collect();
            let default = match &l.default_action {
                Some(a) => action(metrics, &l.name, &upstreams, a, &lp.arms, &sealer),
                None => Action::Fixed(FixedAction {
                    response: FixedResponse {
                        status: StatusCode::NOT_FOUND,
                        content_type: HeaderValue::from_static("text/plain"),
                        body: Bytes::from_static(b"no route\n"),
                    },
                    codes: metrics.requests(&l.name, &"".into()),
                }),
            };
            Arc::new(ListenerConfig {
                stats: metrics.listener(&l.name),
                own_codes: metrics.requests(&l.name, &"".into()),
                name: l.name,
                bind: l.bind,
                bind_at: Some(l.bind_at),
                protocol: l.protocol,
                router: Router::new(
                    rules,
                    Routed { action: default, request: None, response: response(None), jwt: None },
                ),
                response_edits: listener_edits,
                tls: lp.tls,
                mtls: l.tls.as_ref().and_then(|t| t.mtls.as_ref()).map(|m| m.settings.mode),
                max_request_body: l.max_request_body,
                proxy_trusted: l.proxy_trusted,
            })
        })
        .collect();

    // Arms hold their groups now; the snapshot lists groups by name.
    upstreams.sort_by(|a, b| a.group.name.cmp(&b.group.name));
    let json = describe(cfg, &server, input.generation);
    let mut snap = Snapshot::new(input.generation, server, sections.access_log, listeners, upstreams, json);
    snap.jwks = key_sets;
    snap.trust_sources = trust_sources;
    snap.aws = sections.aws;
    snap.cloudwatch = sections.cloudwatch;
    snap.autoscaling = autoscaling;
    snap.discovery = discovery;
    let mut certificates: Vec<CertificateInfo> = certs
        .iter()
        .map(|(name, c)| CertificateInfo {
            name: name.as_str().into(),
            source: c.source.clone(),
            refresh: c.refresh,
            not_after: c.loaded.not_after,
            serial: c.loaded.serial.clone(),
        })
        .collect();
    certificates.sort_by(|a, b| a.name.cmp(&b.name));
    snap.certificates = certificates;
    snap
}

/// A checked action of `listener`, its forward arms resolved, with its metrics handles.
fn action(
    metrics: &Metrics,
    listener: &Arc<str>,
    upstreams: &[Upstream],
    def: &ActionDef,
    arms: &[(usize, u32)],
    sealer: &CookieSealer,
) -> Action {
    let none: Arc<str> = "".into();
    match def {
        ActionDef::Forward { stickiness } => {
            let arms: Vec<ForwardArm> = arms
                .iter()
                .map(|&(i, weight)| {
                    let Upstream { group, transport, sticky } = upstreams[i].clone();
                    ForwardArm {
                        sticky,
                        codes: metrics.requests(listener, &group.name),
                        target_response: metrics.target_response(&group.name),
                        group_stats: metrics.group(&group.name),
                        group,
                        transport,
                        weight,
                    }
                })
                .collect();
            let total_weight = arms.iter().map(|a| a.weight).sum();
            let stickiness = stickiness.filter(|_| arms.len() > 1).map(|d| {
                let names: Vec<&str> = arms.iter().map(|a| &*a.group.name).collect();
                Arc::new(GroupStickiness::new(&names, d, sealer.clone()))
            });
            Action::Forward(ForwardAction { arms, total_weight, stickiness })
        }
        ActionDef::Redirect(r) => {
            Action::Redirect(RedirectAction { to: r.clone(), codes: metrics.requests(listener, &none) })
        }
        ActionDef::Fixed(f) => {
            Action::Fixed(FixedAction { response: f.clone(), codes: metrics.requests(listener, &none) })
        }
    }
}

/// The active configuration for `GET /config`: the file as it is in force, in its own
/// spellings (every key but `generation` is a configuration key: converted to TOML it checks and
/// compiles to the same configuration). `[server]` shows the values in force, defaults included
/// (a reload leaves the start-up-only settings as they were); unset optional keys are left out.
/// Certificates appear as their file paths; no key material is ever in it.
fn describe(cfg: &FileConfig, server: &ServerSettings, generation: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    strip_nulls(&mut v);
    v["server"]["worker_threads"] = json!(server.worker_threads);
    v["server"]["admin_bind"] = json!(server.admin_bind.to_string());
    v["server"]["max_connections"] = json!(server.max_connections);
    v["generation"] = json!(generation);
    v
}

/// Drops null members (unset optional keys) everywhere: TOML has no null.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::HealthCheck;

    fn errors(text: &str) -> Vec<String> {
        let m = Metrics::default();
        match compile(CompileInput {
            name: "t.toml",
            text,
            previous: None,
            metrics: &m,
            generation: 1,
            base_dir: None,
            material: &Default::default(),
        }) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// Asserts that `text` gives exactly the errors (and warnings) `want`, each a prefix of one.
    fn assert_errors(text: &str, want: &[&str]) {
        let e = errors(text);
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn collects_every_error_with_line_and_column() {
        let text = r#"
[[listeners]]
name = "web"
bind = "0.0.0.0:99999"

[[rules]]
name = "a"
listeners = ["web", "nope"]
priority = 5
source_ip = ["10.0.0.0/33"]
forward = "missing"

[[rules]]
name = "b"
listeners = ["web"]
priority = 5
fixed_response = { status = 200 }
forward = "api"

[[target_groups]]
name = "api"
targets = ["127.0.0.1"]
"#;
        assert_errors(
            text,
            &[
                "t.toml:4:8: bad bind address",
                "t.toml:8:21: rule \"a\" names unknown listener \"nope\"",
                "t.toml:10:14: bad CIDR",
                "t.toml:11:11: rule \"a\" forwards to unknown target group \"missing\"",
                "t.toml:14:8: rule \"b\" needs exactly one action",
                "t.toml:16:12: priority 5 on listener \"web\" is already used",
                "t.toml:22:12: bad target address",
            ],
        );
    }

    #[test]
    fn mutual_tls_is_checked_at_its_keys() {
        let text = r#"
[[certificates]]
name = "c"
cert = "/nonexistent/c.crt"
key = "/nonexistent/c.key"

[[listeners]]
name = "a"
bind = "127.0.0.1:1"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "verify" }

[[listeners]]
name = "b"
bind = "127.0.0.1:2"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "verify", trust_store = "/nonexistent/ca.pem", crl = ["/nonexistent/x.crl"] }

[[listeners]]
name = "p"
bind = "127.0.0.1:3"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "passthrough", trust_store = "ca.pem" }

[[listeners]]
name = "h"
bind = "127.0.0.1:4"
mutual_tls = { mode = "verify", trust_store = "ca.pem" }

[[listeners]]
name = "m"
bind = "127.0.0.1:5"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "sometimes" }
"#;
        assert_errors(
            text,
            &[
                "t.toml:4:8: certificate \"c\": cannot read certificate file",
                "t.toml:12:14: listener \"a\": mutual_tls: mode = \"verify\" needs trust_store",
                "t.toml:19:47: listener \"b\": mutual_tls: cannot read trust store /nonexistent/ca.pem",
                "t.toml:19:76: listener \"b\": mutual_tls: cannot read CRL file /nonexistent/x.crl",
                "t.toml:26:52: listener \"p\": mutual_tls: trust_store is for mode = \"verify\"",
                "t.toml:31:14: mutual_tls is only valid on https listeners",
                "t.toml:38:23: unknown variant `sometimes`, expected one of `off`, `verify`, `passthrough`",
            ],
        );
        // Files that are not what they should be.
        let dir = std::env::temp_dir().join(format!("pilotfish-mtls-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "hello").unwrap();
        std::fs::write(dir.join("x.crl"), "junk").unwrap();
        let text = format!(
            r#"
[[certificates]]
name = "c"
cert = "/nonexistent/c.crt"
key = "/nonexistent/c.key"

[[listeners]]
name = "b"
bind = "127.0.0.1:2"
protocol = "https"
certificates = ["c"]
mutual_tls = {{ mode = "verify", trust_store = "{0}/ca.pem", crl = ["{0}/x.crl"] }}
"#,
            dir.display()
        );
        assert_errors(
            &text,
            &[
                "t.toml:4:8: certificate \"c\": cannot read certificate file",
                "t.toml:12:47: listener \"b\": mutual_tls: no CERTIFICATE block in trust store",
                "t.toml:12:",
            ],
        );
        assert!(errors(&text).iter().any(|e| e.contains("no X509 CRL block in")), "{:?}", errors(&text));
        // AWS sources: one each, well formed; refresh only with them.
        let text = r#"[aws]
region = "us-east-1"

[[certificates]]
name = "c"
cert = "/nonexistent/c.crt"
key = "/nonexistent/c.key"

[[listeners]]
name = "a"
bind = "127.0.0.1:1"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "verify", trust_store = { s3 = "trust/ca.pem" }, crl = [{ ssm = "/x", s3 = "s3://b/k" }] }

[[listeners]]
name = "b"
bind = "127.0.0.1:2"
protocol = "https"
certificates = ["c"]
mutual_tls = { mode = "verify", trust_store = { ssm = "/ca" }, refresh = "1m" }
"#;
        assert_errors(
            text,
            &[
                "t.toml:6:8: certificate \"c\": cannot read certificate file",
                "t.toml:14:47: listener \"a\": mutual_tls: trust store: bad S3 location \"trust/ca.pem\"",
                "t.toml:14:78: listener \"a\": mutual_tls: CRL file: give a file path, or exactly one of s3",
                "t.toml:21:47: listener \"b\": mutual_tls: SSM parameter /ca was not fetched",
            ],
        );
    }

    #[test]
    fn jwt_is_checked_at_its_keys() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"

[[rules]]
name = "a"
listeners = ["web"]
priority = 1
path = ["/a"]
jwt = { issuer = "", jwks = "http://idp.test/jwks.json", audience = [], claims = { exp = "1", scope = ["a b"] }, header = "bad header" }
fixed_response = { status = 200 }

[[rules]]
name = "b"
listeners = ["web"]
priority = 2
path = ["/b"]
jwt = { issuer = "https://idp.test/", jwks = "https://idp.test/jwks.json", ca = "/nonexistent/ca.pem", refresh = "10s", min_refresh = "1m" }
fixed_response = { status = 200 }

[[rules]]
name = "c"
listeners = ["web"]
priority = 3
path = ["/c"]
jwt = { issuer = "https://idp.test/", jwks = "https://idp.test/jwks.json", claims = { tenant = "acme" }, refresh = "5m" }
fixed_response = { status = 200 }
"#;
        assert_errors(
            text,
            &[
                "t.toml:11:7: warning: rule \"a\": jwt on http listener \"web\": bearer tokens travel in clear",
                "t.toml:19:7: warning: rule \"b\": jwt on http listener",
                "t.toml:27:7: warning: rule \"c\": jwt on http listener",
                "t.toml:11:18: rule \"a\": jwt: issuer must be 1..=2048 characters",
                "t.toml:11:29: rule \"a\": jwt: jwks must be an https:// URL",
                "t.toml:11:69: rule \"a\": jwt: audience lists no value",
                "t.toml:11:82: rule \"a\": jwt: claim \"exp\" is always checked",
                "t.toml:11:82: rule \"a\": jwt: claim \"scope\": value \"a b\" has a space",
                "t.toml:11:123: rule \"a\": jwt: bad header name \"bad header\"",
                "t.toml:19:135: rule \"b\": jwt: min_refresh is longer than refresh",
                "t.toml:19:81: rule \"b\": jwt: cannot read CA file /nonexistent/ca.pem",
            ],
        );
    }

    #[test]
    fn stickiness_is_checked_at_its_keys() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_action = { forward = { target_groups = [{ target_group = "a", weight = 1 }, { target_group = "b", weight = 1 }], stickiness = "8d" } }

[[target_groups]]
name = "a"
targets = ["127.0.0.1:9000"]
stickiness = { type = "app_cookie", duration = "0s" }

[[target_groups]]
name = "b"
targets = ["127.0.0.1:9001"]
stickiness = { type = "lb_cookie", cookie_name = "X" }

[[target_groups]]
name = "c"
targets = ["127.0.0.1:9002"]
stickiness = { type = "app_cookie", cookie_name = "AWSALB" }
"#;
        assert_errors(
            text,
            &[
                "t.toml:5:30: default_action: forward stickiness must be 1s..=7d",
                "t.toml:10:48: target group \"a\": stickiness duration must be 1s..=7d",
                "t.toml:10:23: target group \"a\": app_cookie needs cookie_name",
                "t.toml:15:50: target group \"b\": cookie_name is for type = \"app_cookie\"",
                "t.toml:18:8: warning: target group \"c\" is not used",
                "t.toml:20:51: target group \"c\": cookie_name \"AWSALB\" is reserved",
            ],
        );
    }

    #[test]
    fn the_cap_and_its_queue_are_checked_at_their_keys() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_action = { forward = { target_groups = [{ target_group = "a", weight = 1 }, { target_group = "b", weight = 1 }] } }

[[target_groups]]
name = "a"
targets = ["127.0.0.1:9000"]
queue = { size = 10 }

[[target_groups]]
name = "b"
targets = ["127.0.0.1:9001"]
max_requests_per_target = 2000000
queue = { size = 0, timeout = "0s" }
"#;
        assert_errors(
            text,
            &[
                "t.toml:10:9: target group \"a\": a queue needs max_requests_per_target",
                "t.toml:15:27: max_requests_per_target must be 0..=1000000",
                "t.toml:16:18: queue size must be 1..=1000000",
                "t.toml:16:31: queue timeout must be greater than 0 and at most 10m",
            ],
        );
    }

    #[test]
    fn header_edits_and_transforms_are_checked_at_their_keys() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
response_headers = { "content-length" = "1" }
server_header = false

[[rules]]
name = "a"
listeners = ["web"]
priority = 1
transforms = { host = { regex = "(unclosed", replace = "x" }, url = { regex = "^/(a)$", replace = "/$2" } }
request_headers = { set = { "x-forwarded-for" = "1.2.3.4" }, remove = ["host"] }
response_headers = { set = { "bad name" = "v" } }
forward = "g"

[[rules]]
name = "b"
listeners = ["web"]
priority = 2
request_headers = { remove = ["x-debug"] }
fixed_response = { status = 200 }

[[target_groups]]
name = "g"
targets = ["127.0.0.1:9000"]
"#;
        assert_errors(text, &[
            "t.toml:5:20: listener \"web\": \"content-length\" cannot be set or removed",
            "t.toml:12:33: rule \"a\": transforms.host: bad regex",
            "t.toml:12:99: rule \"a\": transforms.url: replace refers to ${2}",
            "t.toml:13:19: rule \"a\": request_headers: \"x-forwarded-for\" cannot be set or removed",
            "t.toml:13:19: rule \"a\": request_headers: \"host\" cannot be set or removed: pilotfish sends the request's host: rewrite it with transforms.host",
            "t.toml:14:20: rule \"a\": response_headers: bad header name \"bad name\"",
            "t.toml:21:19: rule \"b\": transforms and request_headers apply to forward rules only",
        ]);
    }

    #[test]
    fn pieces_read_alone_keep_dotted_keys_and_refuse_misshapen_sections() {
        // Dotted keys (valid TOML) at the root and inside an element, next to an error elsewhere:
        // only that error, and the checks after it still see the dotted values at their places.
        let text = r#"server.idle_timeout = "5s"
server.max_headers = 80

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_action.fixed_response = { status = 404 }
bogus = 1

[[listeners]]
name = "other"
bind = "nowhere"
"#;
        assert_errors(text, &["t.toml:8:1: unknown field `bogus`", "t.toml:12:8: bad bind address"]);
        // A section written as an array of tables is an error, not the defaults.
        let e = errors("[[server]]\nidle_timeout = \"5s\"\n[listenrs]\n");
        assert!(e.iter().any(|x| x.starts_with("t.toml:1:1: invalid type")), "{e:#?}");
        assert!(e.iter().any(|x| x.starts_with("t.toml:3:2: unknown key `listenrs`")), "{e:#?}");
    }

    #[test]
    fn tables_the_file_makes_implicitly_are_read() {
        // Valid TOML that toml's own Spanned refuses: `default_action` made by a sub-table
        // header, a rule's `redirect` by dotted keys.
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"

[listeners.default_action.fixed_response]
status = 404
body = "none here"

[[rules]]
name = "old"
listeners = ["web"]
priority = 1
path = ["/old"]
redirect.path = "/new"
redirect.status = 302
"#;
        let m = Metrics::default();
        let input = CompileInput {
            name: "t.toml",
            text,
            previous: None,
            metrics: &m,
            generation: 1,
            base_dir: None,
            material: &Default::default(),
        };
        let (snap, _) = compile(input).unwrap_or_else(|d| panic!("{d}"));
        let listener = snap.listener("web").unwrap();
        assert!(
            matches!(&listener.router.default_action().action, Action::Fixed(f) if f.response.status == 404 && &f.response.body[..] == b"none here")
        );
        assert!(matches!(&listener.router.rules()[0].action.action, Action::Redirect(r) if r.to.status == 302));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_located() {
        let e = errors("[server]\nidle_timout = \"5s\"\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:2:1: unknown field `idle_timout`")), "{e:?}");
        let e = errors("[server]\nidle_timeout = \"5 parsecs\"\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:2:16: invalid duration")), "{e:?}");
        let e = errors("[server]\nidle_timeout = \"5s\"\n[listenrs]\n");
        assert!(e.iter().any(|e| e.starts_with("t.toml:3:2: unknown key `listenrs`")), "{e:?}");
    }

    #[test]
    fn schema_errors_are_collected_like_semantic_ones() {
        // Key typos, bad durations, wrong types and an unknown target group: all of them, each at
        // its key or value. An element with a bad value is still read without it (the listener's
        // reference to "nope" is checked; the group "broken" exists for the rule, and is warned
        // about: its targets were set aside).
        let text = r#"
[server]
idle_timout = "5s"
header_read_timeout = "soon"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
max_request_body = "big"
default_action = { forward = "nope" }

[[rules]]
name = "a"
listeners = ["web"]
priority = 1
forward = "broken"

[[target_groups]]
name = "broken"
retries = "many"
targets = "127.0.0.1:9000"
"#;
        assert_errors(
            text,
            &[
                "t.toml:3:1: unknown field `idle_timout`",
                "t.toml:4:23: invalid duration",
                "t.toml:9:20: invalid type",
                "t.toml:10:30: default_action forwards to unknown target group \"nope\"",
                "t.toml:19:8: warning: target group \"broken\" has no targets",
                "t.toml:20:11: invalid type",
                "t.toml:21:11: invalid type",
            ],
        );
    }

    #[test]
    fn an_element_with_an_error_is_still_a_known_name() {
        // Each mistake once: the listener, the rule and the group all have errors, and the names
        // they give each other are not reported as unknown.
        let text = r#"
[[listeners]]
name = "web"
bind = "nope"
default_action = { forward = "g" }

[[rules]]
name = "r"
listeners = ["web"]
priority = 1
method = ["get"]
forward = "g"

[[target_groups]]
name = "g"
targets = ["127.0.0.1:0"]
"#;
        assert_errors(
            text,
            &["t.toml:4:8: bad bind address", "t.toml:11:10: bad method", "t.toml:16:12: target \"127.0.0.1:0\" needs"],
        );
    }

    #[test]
    fn unset_keys_get_the_compiled_types_defaults() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = { forward = "g" }

[[target_groups]]
name = "g"
targets = ["127.0.0.1:9000"]
health_check = { interval = "10s" }

[[target_groups]]
name = "d"
discovery = { ecs = { cluster = "c", service = "s", container_port = 80 } }
"#;
        let m = Metrics::default();
        let input = CompileInput {
            name: "t.toml",
            text,
            previous: None,
            metrics: &m,
            generation: 1,
            base_dir: None,
            material: &Default::default(),
        };
        let (snap, _) = compile(input).unwrap_or_else(|d| panic!("{d}"));
        let g = snap.upstream("g").expect("group g");
        let hc = g.group.settings.health_check.as_ref().expect("health check");
        let d = HealthCheck::default();
        assert_eq!(
            (hc.interval, hc.timeout, &hc.path, &hc.matcher),
            (Duration::from_secs(10), d.timeout, &d.path, &d.matcher)
        );
        let t = Transport::new(UpstreamProtocol::Http1);
        assert_eq!((g.transport.connect_timeout, g.transport.retries), (t.connect_timeout, t.retries));
        assert_eq!(snap.discovery_of("d").map(DiscoverySpec::refresh), Some(DiscoverySpec::ECS_REFRESH));
        assert_eq!(snap.listener("web").and_then(|l| l.bind_at), Some((4, 8)));
        let names: Vec<&str> = snap.target_groups().map(|g| &*g.name).collect();
        assert_eq!(names, ["d", "g"], "groups are listed by name");
    }
}
