//! AWS Copilot "Load Balanced Web Service" manifests → a pilotfish configuration.
//!
//! Each manifest is read as a YAML tree (fields come in several forms, and every field must be
//! accounted for): the `environments.<env>` override is merged over the base first, as Copilot
//! does (maps merged key by key, at any depth; anything else — scalars, lists, a map replacing a
//! scalar — replaced whole; a null override keeps the base). Then every field is either mapped,
//! or reported as a [`Note`] (a comment above the service's target groups in the output, and a
//! line on stderr) saying why not. A manifest of another `type` is skipped with a note; one that
//! is not YAML, has `http: false` (no Application Load Balancer) or a value pilotfish would
//! refuse is an error naming the file and the field.
//!
//! What maps to what:
//!
//! | Copilot | pilotfish |
//! |---|---|
//! | `http.path` `/x` (or `x`, `/x/`) | a rule, `path = ["/x", "/x/*"]` |
//! | `http.path` `/` | the listener's `default_action` (forward), or, with conditions (alias, source IPs), a rule with no path at the lowest priority |
//! | `http.alias` (a string, a list of strings, a list of `{name, hosted_zone}`) | the rule's `host` |
//! | `http.allowed_source_ips` | the rule's `source_ip` |
//! | `http.healthcheck` (a path, or a map) | `[target_groups.health_check]`: `path`, `port`, `success_codes` → `matcher`, `healthy_threshold`, `unhealthy_threshold`, `interval`, `timeout` (always emitted: Copilot's targets are always checked, ALB's defaults otherwise, which are Copilot's) |
//! | `http.deregistration_delay` | the group's `deregistration_delay` (Copilot's default, 60s, when absent) |
//! | `http.stickiness: true` | the group's `stickiness = { type = "lb_cookie" }` (1 day, as ALB) |
//! | `http.version` http1, http2, grpc | the group's `protocol` http1, http2, http2 (gRPC passes through HTTP/2 groups) |
//! | `http.target_container`, `http.target_port`, `image.port`, `sidecars.<name>.port` | the port (and, with ECS discovery, the container) targets are reached on |
//! | `http.redirect_to_https: true` | with an https listener: the http listener's default action redirects to https (301, port 443), and the service's rules are on the https listener only; services without it are on both |
//! | `http.additional_rules[n]` | rule `<svc>-<n>` (n from 1), with the same fields; its own target group `<svc>-<n>` when its target or group settings differ from the service's |
//! | `count.range` + `count.requests` / `count.response_time` (+ `cooldown`) | `[target_groups.autoscaling]` on the service's first group (RequestCountPerTarget / TargetResponseTime, target tracking), with `[cloudwatch]`, when `--cluster` names the ECS cluster |
//!
//! Targets are found where Copilot registers every service: Cloud Map, namespace
//! `<env>.<app>.local`, service `<svc>`, at the target port (`port` set, so a sidecar port
//! works whatever the instance's `AWS_INSTANCE_PORT`). With [`Discovery::Ecs`] they are the ECS
//! service's tasks instead: Copilot's cluster and service names are CloudFormation's (with a
//! random suffix), so `--cluster` is required and `--ecs-service SVC=NAME` names a service (else
//! `<svc>`, noted as an assumption).
//!
//! Listeners: `http` on `0.0.0.0:8080` and, given `--certificate-arn` (exportable ACM
//! certificates), `https` on `0.0.0.0:8443` — the container ports of pilotfish's task definition
//! and Dockerfile, behind an NLB forwarding 80 and 443 (so redirects go to port 443). Without a
//! certificate there is no https listener (a comment says how to add one) and
//! `redirect_to_https` is noted as not mapped. `[aws] region` is written when known (`--region`,
//! or the certificate ARN's region); else the SDK's chain (AWS_REGION, which the task
//! definition sets) provides it.
//!
//! Rule order. Copilot numbers its listener rules at deploy time (the root path last); the
//! manifests do not say in which order services were deployed, so the import orders every
//! rule of every service by specificity, which keeps a more specific path from being shadowed
//! by a shorter one: non-root paths first, deeper paths (more `/` segments) before shallower,
//! then longer before shorter, then rules with more kinds of conditions (host, source IP)
//! before fewer, then the order of the manifests on the command line (a service's main rule
//! before its additional rules). Priorities are 10, 20, 30, ... in that order (room to insert
//! rules by hand). Rules are named `<svc>` and `<svc>-<n>`.
//!
//! Not mapped (each noted with its reason): everything that is the task's rather than the load
//! balancer's (`image` but its port, `cpu`, `memory`, `platform`, `count` as a number,
//! `variables`, `secrets`, `env_file`, `storage`, `logging`, `network`, `sidecars` but their
//! ports, `exec`, `deployment`, `entrypoint`, `command`, `observability`, `publish`,
//! `taskdef_overrides`), `nlb` (pilotfish is layer 7: an NLB goes in front of it), DNS
//! (`hosted_zone`), `healthcheck.grace_period` (ECS's), CPU and memory scaling, Fargate Spot,
//! gRPC status-code matchers (pilotfish checks HTTP status codes), and any field this import
//! does not know.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::{quote, string_list, ImportError, Note, NoteKind};

/// The manifest `type` this import reads.
pub const SERVICE_TYPE: &str = "Load Balanced Web Service";

/// The port redirects to https name: the NLB's public TLS port in front of pilotfish.
const PUBLIC_HTTPS_PORT: u16 = 443;

/// Copilot's deregistration delay when the manifest sets none (ALB's own is 300s).
const COPILOT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(60);

/// Where the imported target groups find their targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discovery {
    /// Cloud Map: `<env>.<app>.local` / `<svc>`, where Copilot registers every service.
    #[default]
    CloudMap,
    /// The ECS service's RUNNING tasks (`--cluster` required).
    Ecs,
}

/// What the command line says besides the manifests.
#[derive(Debug, Clone)]
pub struct Options {
    pub app: String,
    pub env: String,
    pub http_port: u16,
    pub https_port: u16,
    /// ARNs of exportable ACM certificates; any makes an https listener.
    pub certificate_arns: Vec<String>,
    pub region: Option<String>,
    pub discovery: Discovery,
    /// The ECS cluster of the environment (Copilot's, named by CloudFormation).
    pub cluster: Option<String>,
    /// ECS service names by Copilot service name.
    pub ecs_services: BTreeMap<String, String>,
    /// Peers whose PROXY headers both listeners read (the NLB in front: its subnets' CIDRs).
    pub proxy_trusted: Vec<String>,
}

impl Options {
    /// The defaults for application `app` and environment `env`.
    pub fn new(app: &str, env: &str) -> Options {
        Options {
            app: app.into(),
            env: env.into(),
            http_port: 8080,
            https_port: 8443,
            certificate_arns: Vec::new(),
            region: None,
            discovery: Discovery::CloudMap,
            cluster: None,
            ecs_services: BTreeMap::new(),
            proxy_trusted: Vec::new(),
        }
    }
}

/// One manifest: its name (the path as given) and text.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: String,
    pub text: String,
}

/// The configuration an import made, and what it says about the manifests.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The configuration (TOML with comments).
    pub toml: String,
    /// Every field not mapped, every manifest skipped, every assumption.
    pub notes: Vec<Note>,
    pub services: usize,
    pub rules: usize,
    pub target_groups: usize,
}

/// The application named by Copilot's workspace file (`copilot/.workspace`, `application:`),
/// looked for beside the manifest's folder (`copilot/<svc>/manifest.yml`).
pub fn workspace_app(manifest: &Path) -> Option<String> {
    let dir = manifest.parent()?.parent()?;
    let text = std::fs::read_to_string(dir.join(".workspace")).ok()?;
    let v: Value = serde_yaml_ng::from_str(&text).ok()?;
    v.get("application")?.as_str().map(str::to_owned)
}

/// Turns `manifests` into a configuration, or says why it cannot (every error of every
/// manifest at once).
pub fn import(opts: &Options, manifests: &[Manifest]) -> Result<Imported, Vec<ImportError>> {
    let region = check_options(opts).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut services = Vec::new();
    let mut notes = Vec::new();
    for m in manifests {
        match read(opts, m) {
            Read::Service(s) => services.push(*s),
            Read::Skipped(n) => notes.push(n),
            Read::Invalid(mut e) => errors.append(&mut e),
        }
    }
    let (mut seen, mut rule_names, mut group_names) = (HashSet::new(), HashSet::new(), HashSet::new());
    for s in &services {
        if !seen.insert(s.name.as_str()) {
            errors.push(manifest_error(&s.file, format!("name: a second service named {:?}", s.name)));
            continue;
        }
        // `<svc>-<n>` of one service may be another service's name.
        for r in &s.routes {
            if !rule_names.insert(r.name.clone()) {
                errors
                    .push(manifest_error(&s.file, format!("rule name {:?} is made twice (rename a service)", r.name)));
            }
        }
        for g in &s.groups {
            if !group_names.insert(g.name.clone()) {
                errors.push(manifest_error(
                    &s.file,
                    format!("target group name {:?} is made twice (rename a service)", g.name),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if services.is_empty() {
        return Err(vec![ImportError::Usage(format!("no {SERVICE_TYPE} among the manifests: nothing to import"))]);
    }
    let plan = plan(opts, &services)?;
    for s in &services {
        notes.extend(s.notes.iter().cloned());
    }
    notes.extend(plan.notes.iter().cloned());
    let toml = emit(opts, region.as_deref(), manifests, &services, &plan, &notes);
    Ok(Imported {
        toml,
        notes,
        services: services.len(),
        rules: plan.rules.len(),
        target_groups: services.iter().map(|s| s.groups.len()).sum(),
    })
}

/// The options' own errors; the region to write.
fn check_options(opts: &Options) -> Result<Option<String>, ImportError> {
    let usage = |m: String| Err(ImportError::Usage(m));
    for (what, v) in [("--app", &opts.app), ("--env", &opts.env)] {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return usage(format!("{what} {v:?}: Copilot names are letters, digits and '-'"));
        }
    }
    if opts.discovery == Discovery::Ecs && opts.cluster.is_none() {
        return usage(
            "--discovery ecs needs --cluster NAME: Copilot's cluster is named by CloudFormation \
             (`aws ecs list-clusters` shows it)"
                .into(),
        );
    }
    if opts.http_port == 0 || opts.https_port == 0 || opts.http_port == opts.https_port {
        return usage("--http-port and --https-port must be two different non-zero ports".into());
    }
    for cidr in &opts.proxy_trusted {
        if crate::config::compile::parse_cidr(cidr).is_none() {
            return usage(format!("--proxy-trusted {cidr:?}: expected a CIDR block like \"10.0.0.0/16\""));
        }
    }
    let mut region = opts.region.clone();
    for arn in &opts.certificate_arns {
        let Some(r) = acm_arn_region(arn) else {
            return usage(format!("--certificate-arn {arn:?}: expected arn:aws:acm:REGION:ACCOUNT:certificate/ID"));
        };
        match &region {
            Some(have) if have != r => {
                return usage(format!(
                    "--certificate-arn {arn:?} is in {r}, not in {have}: pilotfish calls ACM in its one [aws] region"
                ))
            }
            Some(_) => {}
            None => region = Some(r.to_owned()),
        }
    }
    Ok(region)
}

/// The region of an ACM certificate ARN.
fn acm_arn_region(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "acm"
        && !parts[3].is_empty()
        && parts[5].strip_prefix("certificate/").is_some_and(|id| !id.is_empty());
    ok.then(|| parts[3])
}

fn manifest_error(file: &str, message: String) -> ImportError {
    ImportError::Manifest { file: file.into(), message }
}

// ---------------------------------------------------------------------------------------------
// The model a manifest is read into.

/// The upstream protocol Copilot calls `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
    Grpc,
}

/// `[target_groups.health_check]`: what the manifest set (ALB's defaults for the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    path: String,
    port: Option<u16>,
    matcher: Option<String>,
    healthy: Option<u32>,
    unhealthy: Option<u32>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/".into(),
            port: None,
            matcher: None,
            healthy: None,
            unhealthy: None,
            interval: None,
            timeout: None,
        }
    }
}

/// A target group: where a rule's traffic goes and how targets are treated.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    name: String,
    container: String,
    port: u16,
    health: Health,
    sticky: bool,
    deregistration: Duration,
    version: Version,
}

impl Group {
    /// Same targets, same treatment: one group serves both rules.
    fn same_as(&self, o: &Group) -> bool {
        Group { name: String::new(), ..self.clone() } == Group { name: String::new(), ..o.clone() }
    }
}

/// A listener rule of one service.
#[derive(Debug, Clone)]
struct Route {
    name: String,
    file: String,
    /// `http` or `http.additional_rules[i]`.
    field: String,
    /// The normalized path (`/api`); None for the root.
    path: Option<String>,
    hosts: Vec<String>,
    source_ips: Vec<String>,
    group: String,
    /// `redirect_to_https` as written (None: Copilot's default, true): when true, on the https
    /// listener only (when there is one).
    redirect: Option<bool>,
    /// Command-line order of the manifest, then the rule's order in it.
    seq: (usize, usize),
}

/// The metric of Copilot's request-driven autoscaling.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    RequestCountPerTarget(f64),
    TargetResponseTime(Duration),
}

/// Target tracking from `count`.
#[derive(Debug, Clone, PartialEq)]
struct Scaling {
    min: u32,
    max: u32,
    metric: Metric,
    scale_in: Option<Duration>,
    scale_out: Option<Duration>,
}

/// One service read from its manifest.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    file: String,
    groups: Vec<Group>,
    routes: Vec<Route>,
    scaling: Option<Scaling>,
    /// The ECS service's name (ECS discovery, autoscaling).
    ecs_service: String,
    notes: Vec<Note>,
}

// ---------------------------------------------------------------------------------------------
// Reading a manifest.

enum Read {
    Service(Box<Service>),
    Skipped(Note),
    Invalid(Vec<ImportError>),
}

/// Errors and notes of one manifest.
struct Cx<'a> {
    file: &'a str,
    errors: Vec<ImportError>,
    notes: Vec<Note>,
}

impl Cx<'_> {
    fn err(&mut self, field: &str, message: impl std::fmt::Display) {
        self.errors.push(manifest_error(self.file, format!("{field}: {message}")));
    }

    fn note(&mut self, kind: NoteKind, field: &str, reason: impl Into<String>) {
        self.notes.push(Note { file: self.file.into(), field: field.into(), reason: reason.into(), kind });
    }

    fn unmapped(&mut self, field: &str, value: &Value) {
        let shown = match value {
            Value::String(s) if s.len() <= 40 => format!(" ({s:?})"),
            Value::Number(n) => format!(" ({n})"),
            Value::Bool(b) => format!(" ({b})"),
            _ => String::new(),
        };
        self.note(NoteKind::Unmapped, &format!("{field}{shown}"), why_unmapped(field));
    }
}

/// A YAML map being read: the keys taken are mapped, the rest reported by [`Obj::finish`].
struct Obj {
    at: String,
    entries: Vec<(String, Value)>,
}

impl Obj {
    /// `v` as a map at field `at` (an error otherwise).
    fn new(cx: &mut Cx<'_>, at: &str, v: Value) -> Option<Obj> {
        let Value::Mapping(m) = v else {
            cx.err(at, format!("expected a map, found {}", kind(&v)));
            return None;
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            match k {
                Value::String(k) => entries.push((k, v)),
                other => cx.err(at, format!("a key that is not a string: {other:?}")),
            }
        }
        Some(Obj { at: at.into(), entries })
    }

    /// The field under this map.
    fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.into()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    /// Removes `key`; a null value is no value.
    fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1).filter(|v| !v.is_null())
    }

    /// Reports every key not taken.
    fn finish(self, cx: &mut Cx<'_>) {
        for (k, v) in &self.entries {
            cx.unmapped(&self.path(k), v);
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Why `field` (a path, indexes included) has no pilotfish equivalent.
fn why_unmapped(field: &str) -> String {
    // Indexes do not change the reason: `http.additional_rules[2].hosted_zone` is `…hosted_zone`.
    let mut path = String::with_capacity(field.len());
    let mut skip = false;
    for c in field.chars() {
        match c {
            '[' => skip = true,
            ']' => skip = false,
            c if !skip => path.push(c),
            _ => {}
        }
    }
    let last = path.rsplit('.').next().unwrap_or(&path);
    let top = path.split('.').next().unwrap_or(&path);
    let reason = match (top, last) {
        (_, "hosted_zone") => "Route 53 records: pilotfish manages no DNS; point the alias at the NLB in front of pilotfish",
        (_, "grace_period") => "ECS's grace period after a task starts; pilotfish sends a new target no traffic until it passes one check, and stops no task",
        ("count", "cpu_percentage" | "memory_percentage") => "ECS's CPU/memory utilisation: pilotfish tracks RequestCountPerTarget or TargetResponseTime only ([target_groups.autoscaling])",
        ("count", "spot_from") => "Fargate Spot capacity is ECS's",
        ("count", "count") => "the desired task count is ECS's: pilotfish only scales by target tracking ([target_groups.autoscaling], from count.range with count.requests or count.response_time)",
        ("image", "healthcheck") => "a container health check is ECS's (it replaces the task); pilotfish checks targets with [target_groups.health_check]",
        ("image", _) => "the container image is the task definition's (ECS); pilotfish routes to the tasks it runs",
        ("cpu" | "memory" | "platform", _) => "the task's size and platform are ECS's (task definition)",
        ("variables" | "secrets" | "env_file", _) => "the container's environment is the task definition's, not the load balancer's",
        ("sidecars", _) => "sidecar containers are the task definition's (only a target_container's port is read)",
        ("nlb", _) => "a Network Load Balancer: pilotfish is layer 7; put an NLB (TCP 80/443) in front of pilotfish instead",
        ("network", _) => "VPC placement, security groups and Service Connect are ECS's; pilotfish reaches the tasks by Cloud Map (let its security group in)",
        ("storage", _) => "volumes are the task definition's",
        ("logging" | "observability", _) => "the task's log router and tracing are ECS's; pilotfish logs requests as JSON on stdout ([access_log])",
        ("exec", _) => "ECS Exec is ECS's",
        ("deployment", _) => "ECS's rolling deployment; pilotfish drains removed targets for deregistration_delay",
        ("entrypoint" | "command", _) => "the container's command is the task definition's",
        ("publish", _) => "SNS topics are not HTTP routing",
        ("taskdef_overrides", _) => "CloudFormation overrides of the task definition are ECS's",
        _ => "not a Load Balanced Web Service field this import knows",
    };
    reason.into()
}

fn read(opts: &Options, m: &Manifest) -> Read {
    let mut root: Value = match serde_yaml_ng::from_str(&m.text) {
        Ok(v) => v,
        Err(e) => return Read::Invalid(vec![manifest_error(&m.file, format!("not valid YAML: {e}"))]),
    };
    if let Err(e) = root.apply_merge() {
        return Read::Invalid(vec![manifest_error(&m.file, format!("YAML merge keys: {e}"))]);
    }
    if !root.is_mapping() {
        return Read::Invalid(vec![manifest_error(
            &m.file,
            format!("expected a Copilot manifest (a map), found {}", kind(&root)),
        )]);
    }
    let overrides = root.as_mapping_mut().and_then(|r| r.shift_remove("environments"));
    if let Some(env) = overrides.as_ref().and_then(|o| o.get(opts.env.as_str())) {
        merge(&mut root, env.clone());
    }
    let skip = |reason: String| {
        Read::Skipped(Note { file: m.file.clone(), field: "type".into(), reason, kind: NoteKind::Skipped })
    };
    match root.get("type").map(|t| t.as_str()) {
        Some(Some(SERVICE_TYPE)) => {}
        Some(Some(t)) => return skip(format!("{t:?} is not a {SERVICE_TYPE}: it has no load balancer to import")),
        _ => return skip(format!("no `type`: not a {SERVICE_TYPE} manifest")),
    }
    let mut cx = Cx { file: &m.file, errors: Vec::new(), notes: Vec::new() };
    let service = Obj::new(&mut cx, "", root).and_then(|o| service(opts, &mut cx, o, m));
    match service {
        Some(mut s) if cx.errors.is_empty() => {
            s.notes = cx.notes;
            Read::Service(Box::new(s))
        }
        _ => Read::Invalid(cx.errors),
    }
}

/// Copilot's environment override: `over` merged into `base`.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => merge(bv, v),
                    None if v.is_null() => {}
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// What a rule's target defaults come from.
struct Ports {
    /// The service's own container (named after the service) and its `image.port`.
    main: (String, Option<u16>),
    /// Sidecars by name, and their ports.
    sidecars: BTreeMap<String, Option<u16>>,
}

fn service(opts: &Options, cx: &mut Cx<'_>, mut root: Obj, m: &Manifest) -> Option<Service> {
    root.take("type");
    let name = match root.take("name") {
        Some(Value::String(n)) if valid_name(&n) => n,
        Some(Value::String(n)) => {
            cx.err("name", format!("{n:?}: a Copilot service name is letters, digits and '-'"));
            return None;
        }
        Some(other) => {
            cx.err("name", format!("expected a string, found {}", kind(&other)));
            return None;
        }
        None => {
            cx.err("name", "missing: every manifest names its service");
            return None;
        }
    };
    let mut image_port = None;
    if let Some(image) = root.take("image") {
        if let Some(mut image) = Obj::new(cx, "image", image) {
            image_port = image.take("port").and_then(|p| port(cx, "image.port", &p));
            image.finish(cx);
        }
    }
    let mut sidecars = BTreeMap::new();
    if let Some(v) = root.take("sidecars") {
        if let Some(sc) = Obj::new(cx, "sidecars", v.clone()) {
            for (sname, sv) in &sc.entries {
                let field = sc.path(sname);
                let p = sv.get("port").filter(|p| !p.is_null()).and_then(|p| port(cx, &format!("{field}.port"), p));
                sidecars.insert(sname.clone(), p);
            }
        }
        cx.unmapped("sidecars", &v);
    }
    let ports = Ports { main: (name.clone(), image_port), sidecars };
    let ecs_service = opts.ecs_services.get(&name).cloned().unwrap_or_else(|| name.clone());
    let mut svc = Service {
        name: name.clone(),
        file: m.file.clone(),
        groups: Vec::new(),
        routes: Vec::new(),
        scaling: None,
        ecs_service,
        notes: Vec::new(),
    };
    match root.take("http") {
        Some(Value::Bool(false)) => cx.err(
            "http",
            "false: the service has no Application Load Balancer (an NLB at most): nothing for pilotfish to route; leave the manifest out",
        ),
        Some(v @ Value::Mapping(_)) => {
            if let Some(http) = Obj::new(cx, "http", v) {
                rules(cx, &mut svc, http, &ports);
            }
        }
        Some(other) => cx.err("http", format!("expected a map (or false), found {}", kind(&other))),
        None => cx.err("http", "missing: a Load Balanced Web Service routes through http.path"),
    }
    if let Some(count) = root.take("count") {
        svc.scaling = scaling(opts, cx, count);
    }
    if !opts.ecs_services.contains_key(&name) && (opts.discovery == Discovery::Ecs || svc.scaling.is_some()) {
        cx.note(
            NoteKind::Assumed,
            "--ecs-service",
            format!(
                "ECS service name {name:?}: Copilot's CloudFormation names it {}-{}-{name}-Service-<suffix> \
                 (`aws ecs list-services --cluster {}`); pass --ecs-service {name}=NAME",
                opts.app,
                opts.env,
                opts.cluster.as_deref().unwrap_or("CLUSTER")
            ),
        );
    }
    root.finish(cx);
    Some(svc)
}

/// The service's rules and target groups from `http`.
fn rules(cx: &mut Cx<'_>, svc: &mut Service, mut http: Obj, ports: &Ports) {
    let additional = http.take("additional_rules");
    // The service's, for all its rules: which of them the http listener serves.
    // Copilot's default is true; additional rules inherit the service's unless they set it.
    let redirect = http.take("redirect_to_https").and_then(|v| boolean(cx, "http.redirect_to_https", &v));
    rule(cx, svc, http, ports, 0, redirect);
    let Some(list) = additional else { return };
    let Value::Sequence(list) = list else {
        cx.err("http.additional_rules", format!("expected a list, found {}", kind(&list)));
        return;
    };
    for (i, r) in list.into_iter().enumerate() {
        let field = format!("http.additional_rules[{i}]");
        if let Some(o) = Obj::new(cx, &field, r) {
            rule(cx, svc, o, ports, i + 1, redirect);
        }
    }
}

/// One rule (`n` = 0: the service's main rule) and its target group (a new one unless an
/// earlier rule of the service has the same).
fn rule(cx: &mut Cx<'_>, svc: &mut Service, mut r: Obj, ports: &Ports, n: usize, inherited: Option<bool>) {
    let name = if n == 0 { svc.name.clone() } else { format!("{}-{n}", svc.name) };
    let redirect = match r.take("redirect_to_https") {
        Some(v) => boolean(cx, &r.path("redirect_to_https"), &v).or(inherited),
        None => inherited,
    };
    let path = match r.take("path") {
        Some(Value::String(p)) => match path_prefix(&p) {
            Ok(p) => Some(p),
            Err(e) => {
                cx.err(&r.path("path"), e);
                None
            }
        },
        Some(other) => {
            cx.err(&r.path("path"), format!("expected a string, found {}", kind(&other)));
            None
        }
        None => {
            cx.err(&r.path("path"), "missing: each rule listens on a path ('/' for every path)");
            None
        }
    };
    let hosts = r.take("alias").map(|a| aliases(cx, &r.path("alias"), a)).unwrap_or_default();
    if let Some(z) = r.take("hosted_zone") {
        cx.unmapped(&r.path("hosted_zone"), &z);
    }
    let source_ips = match r.take("allowed_source_ips") {
        Some(v) => source_ips(cx, &r.path("allowed_source_ips"), v),
        None => Vec::new(),
    };
    let version = match r.take("version") {
        None => Version::Http1,
        Some(Value::String(v)) => match v.to_ascii_lowercase().as_str() {
            "http1" => Version::Http1,
            "http2" => Version::Http2,
            "grpc" => Version::Grpc,
            _ => {
                cx.err(&r.path("version"), format!("{v:?}: http1, http2 or grpc"));
                Version::Http1
            }
        },
        Some(other) => {
            cx.err(&r.path("version"), format!("expected http1, http2 or grpc, found {}", kind(&other)));
            Version::Http1
        }
    };
    let mut codes_given = false;
    let health = match r.take("healthcheck") {
        Some(h) => {
            codes_given = h.get("success_codes").is_some();
            healthcheck(cx, &r.path("healthcheck"), h, version)
        }
        None => Health::default(),
    };
    // (With success_codes, healthcheck() has said why they are not mapped.)
    if version == Version::Grpc && !codes_given {
        cx.note(
            NoteKind::Assumed,
            &r.path("healthcheck"),
            "gRPC: the health check is an HTTP/2 GET matched on the HTTP status (default \"200\"); a gRPC server may answer it otherwise (e.g. 415): set matcher to what it answers, or point path at an HTTP endpoint",
        );
    }
    let deregistration = match r.take("deregistration_delay") {
        Some(v) => duration(cx, &r.path("deregistration_delay"), &v)
            .filter(|d| {
                let ok = *d <= Duration::from_secs(3600);
                if !ok {
                    cx.err(&r.path("deregistration_delay"), "at most 1h");
                }
                ok
            })
            .unwrap_or(COPILOT_DEREGISTRATION_DELAY),
        None => COPILOT_DEREGISTRATION_DELAY,
    };
    let sticky = r.take("stickiness").and_then(|v| boolean(cx, &r.path("stickiness"), &v)).unwrap_or(false);
    let container = match r.take("target_container") {
        Some(Value::String(c)) => Some(c),
        Some(other) => {
            cx.err(&r.path("target_container"), format!("expected a container name, found {}", kind(&other)));
            None
        }
        None => None,
    };
    let target_port = r.take("target_port").and_then(|p| port(cx, &r.path("target_port"), &p));
    let target = target(cx, &r.path("target_container"), ports, container, target_port);
    let field = r.at.clone();
    r.finish(cx);
    let (Some((container, port)), Some(path)) = (target, path) else { return };
    let mut group = Group { name: name.clone(), container, port, health, sticky, deregistration, version };
    if let Some(same) = svc.groups.iter().find(|g| g.same_as(&group)) {
        group.name = same.name.clone();
    } else {
        svc.groups.push(group.clone());
    }
    svc.routes.push(Route {
        name,
        file: svc.file.clone(),
        field,
        path,
        hosts,
        source_ips,
        group: group.name.clone(),
        redirect,
        seq: (0, n),
    });
}

/// The container and port a rule's traffic goes to: `target_container` (the service's own, or a
/// sidecar) at `target_port`, else that container's port; `target_port` alone picks the sidecar
/// that exposes it, if one does (else the service's own container).
fn target(
    cx: &mut Cx<'_>,
    field: &str,
    ports: &Ports,
    container: Option<String>,
    target_port: Option<u16>,
) -> Option<(String, u16)> {
    let (main, main_port) = (&ports.main.0, ports.main.1);
    let container = match container {
        Some(c) => c,
        None => target_port
            .and_then(|p| ports.sidecars.iter().find(|(_, sp)| **sp == Some(p)).map(|(n, _)| n.clone()))
            .unwrap_or_else(|| main.clone()),
    };
    let own_port = if &container == main {
        main_port
    } else if let Some(p) = ports.sidecars.get(&container) {
        *p
    } else {
        cx.err(field, format!("{container:?} is neither the service's container ({main:?}) nor one of its sidecars"));
        return None;
    };
    match target_port.or(own_port) {
        Some(p) => Some((container, p)),
        None => {
            cx.err(field, format!("no port to send traffic to: set image.port (or target_port) for {container:?}"));
            None
        }
    }
}

/// `/x`, `x` and `/x/` are the prefix `/x`; `/` (or nothing) is the root (None).
fn path_prefix(p: &str) -> Result<Option<String>, String> {
    let trimmed = p.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    let prefix = format!("/{trimmed}");
    if prefix.len() + 2 > 128 || prefix.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{p:?}: no spaces, at most 126 characters"));
    }
    Ok(Some(prefix))
}

/// A rule's path patterns: the prefix itself and everything under it (as Copilot's ALB rules).
fn path_patterns(prefix: &str) -> Vec<String> {
    vec![prefix.to_owned(), format!("{prefix}/*")]
}

/// `alias`: a string, a list of strings, or a list of `{ name, hosted_zone }`.
fn aliases(cx: &mut Cx<'_>, field: &str, v: Value) -> Vec<String> {
    let items = match v {
        Value::Sequence(s) => s,
        one => vec![one],
    };
    let mut hosts = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let host = match item {
            Value::String(h) => Some(h),
            m @ Value::Mapping(_) => {
                let Some(mut o) = Obj::new(cx, &at, m) else { continue };
                let name = o.take("name");
                if let Some(z) = o.take("hosted_zone") {
                    cx.unmapped(&o.path("hosted_zone"), &z);
                }
                o.finish(cx);
                match name {
                    Some(Value::String(h)) => Some(h),
                    _ => {
                        cx.err(&at, "an alias map needs `name`");
                        None
                    }
                }
            }
            other => {
                cx.err(&at, format!("expected a host name, found {}", kind(&other)));
                None
            }
        };
        if let Some(h) = host {
            if h.is_empty() || h.len() > 128 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*?_".contains(&b)) {
                cx.err(&at, format!("{h:?} is not a host name"));
            } else {
                hosts.push(h);
            }
        }
    }
    hosts
}

fn source_ips(cx: &mut Cx<'_>, field: &str, v: Value) -> Vec<String> {
    let Value::Sequence(items) = v else {
        cx.err(field, format!("expected a list of CIDR blocks, found {}", kind(&v)));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if crate::config::compile::parse_cidr(s).is_some() => out.push(s.to_owned()),
            _ => cx.err(&format!("{field}[{i}]"), format!("{item:?} is not a CIDR block like \"10.0.0.0/16\"")),
        }
    }
    out
}

/// `healthcheck`: a path, or a map of ALB's health check settings.
fn healthcheck(cx: &mut Cx<'_>, field: &str, v: Value, version: Version) -> Health {
    let mut h = Health::default();
    let mut o = match v {
        Value::String(p) => {
            h.path = p;
            check_health_path(cx, field, &h.path);
            return h;
        }
        v => match Obj::new(cx, field, v) {
            Some(o) => o,
            None => return h,
        },
    };
    match o.take("path") {
        Some(Value::String(p)) => {
            check_health_path(cx, &o.path("path"), &p);
            h.path = p;
        }
        Some(other) => cx.err(&o.path("path"), format!("expected a path, found {}", kind(&other))),
        None => {}
    }
    h.port = o.take("port").and_then(|p| port(cx, &o.path("port"), &p));
    if let Some(codes) = o.take("success_codes") {
        let text = match &codes {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                cx.err(&o.path("success_codes"), format!("expected codes like \"200,301\", found {}", kind(other)));
                None
            }
        };
        if version == Version::Grpc {
            cx.note(
                NoteKind::Unmapped,
                &o.path("success_codes"),
                "gRPC status codes: pilotfish's health check is an HTTP/2 GET matched on the HTTP status; set matcher to what the target answers",
            );
        } else if let Some(text) = text {
            match crate::config::compile::parse_matcher(&text) {
                Ok(_) => h.matcher = Some(text),
                Err(e) => cx.err(&o.path("success_codes"), e),
            }
        }
    }
    for (key, slot) in [("healthy_threshold", &mut h.healthy), ("unhealthy_threshold", &mut h.unhealthy)] {
        if let Some(v) = o.take(key) {
            match v.as_u64() {
                Some(n @ 1..=10) => *slot = Some(n as u32),
                _ => cx.err(&o.path(key), format!("{v:?}: a count 1..=10")),
            }
        }
    }
    h.interval = o.take("interval").and_then(|v| duration(cx, &o.path("interval"), &v));
    h.timeout = o.take("timeout").and_then(|v| duration(cx, &o.path("timeout"), &v));
    if let Some(i) = h.interval {
        if i < Duration::from_millis(50) || i > Duration::from_secs(300) {
            cx.err(&o.path("interval"), "between 50ms and 300s");
        }
    }
    // ALB's default timeout (5s) is what a check without one gets.
    let (interval, timeout) =
        (h.interval.unwrap_or(Duration::from_secs(30)), h.timeout.unwrap_or(Duration::from_secs(5)));
    if timeout.is_zero() || timeout > interval {
        cx.err(
            &o.path("timeout"),
            format!(
                "{} must be greater than 0 and at most the interval ({})",
                fmt_duration(timeout),
                fmt_duration(interval)
            ),
        );
    }
    o.finish(cx);
    h
}

fn check_health_path(cx: &mut Cx<'_>, field: &str, p: &str) {
    if !p.starts_with('/') || p.len() > 1024 || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        cx.err(field, format!("{p:?}: a path starting with '/', no spaces"));
    }
}

/// `count`: a number (ECS's), or a map whose range and request-driven metrics map to target
/// tracking.
fn scaling(opts: &Options, cx: &mut Cx<'_>, v: Value) -> Option<Scaling> {
    if !v.is_mapping() {
        cx.unmapped("count", &v);
        return None;
    }
    let mut o = Obj::new(cx, "count", v)?;
    let range = o.take("range").and_then(|r| range(cx, r));
    let cooldown = o.take("cooldown").and_then(|c| cooldown(cx, "count.cooldown", c)).unwrap_or_default();
    let requests = o.take("requests").map(|v| {
        let (value, cd) = metric_value(cx, "count.requests", v);
        let target = value.and_then(|v| match v.as_f64() {
            Some(t) if t > 0.0 => Some(t),
            _ => {
                cx.err("count.requests", format!("{v:?}: a positive number of requests per task per minute"));
                None
            }
        });
        (target.map(Metric::RequestCountPerTarget), cd)
    });
    let response_time = o.take("response_time").map(|v| {
        let (value, cd) = metric_value(cx, "count.response_time", v);
        let target = value.and_then(|v| duration(cx, "count.response_time", &v)).filter(|d| !d.is_zero());
        (target.map(Metric::TargetResponseTime), cd)
    });
    let chosen = match (requests, response_time) {
        (Some(r), Some(_)) => {
            cx.note(
                NoteKind::Unmapped,
                "count.response_time",
                "pilotfish tracks one metric per target group: count.requests is the one mapped",
            );
            Some(("count.requests", r))
        }
        (Some(r), None) => Some(("count.requests", r)),
        (None, Some(t)) => Some(("count.response_time", t)),
        (None, None) => None,
    };
    let out = match (chosen, range) {
        (None, Some(_)) => {
            cx.note(
                NoteKind::Unmapped,
                "count.range",
                "no count.requests or count.response_time to track (CPU and memory scaling are ECS's)",
            );
            None
        }
        (None, None) => None,
        (Some((field, _)), None) => {
            cx.note(NoteKind::Unmapped, field, "autoscaling needs count.range (the task count's bounds)");
            None
        }
        (Some((_, (None, _))), Some(_)) => None,
        (Some((field, (Some(metric), cd))), Some((min, max))) => {
            if opts.cluster.is_none() {
                cx.note(
                    NoteKind::Unmapped,
                    field,
                    "pilotfish can scale the ECS service ([target_groups.autoscaling]) given its cluster: pass --cluster NAME (and --ecs-service SVC=NAME)",
                );
                None
            } else {
                let cd = cd.unwrap_or_default();
                Some(Scaling { min, max, metric, scale_in: cd.0.or(cooldown.0), scale_out: cd.1.or(cooldown.1) })
            }
        }
    };
    o.finish(cx);
    out
}

/// `count.range`: `"1-10"` or `{ min, max, spot_from }`.
fn range(cx: &mut Cx<'_>, v: Value) -> Option<(u32, u32)> {
    let bounds = match v {
        Value::String(s) => {
            let parsed = s.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            if parsed.is_none() {
                cx.err("count.range", format!("{s:?}: expected \"MIN-MAX\" like \"1-10\""));
            }
            parsed
        }
        v => {
            let mut o = Obj::new(cx, "count.range", v)?;
            let min = o.take("min").and_then(|v| v.as_u64());
            let max = o.take("max").and_then(|v| v.as_u64());
            o.finish(cx);
            match (min, max) {
                (Some(a), Some(b)) => Some((a as u32, b as u32)),
                _ => {
                    cx.err("count.range", "needs min and max");
                    None
                }
            }
        }
    };
    let (min, max) = bounds?;
    if min > max || max == 0 {
        cx.err("count.range", format!("{min}-{max}: needs min <= max and max >= 1"));
        return None;
    }
    Some((min, max))
}

/// `{ in, out }` cooldowns.
fn cooldown(cx: &mut Cx<'_>, field: &str, v: Value) -> Option<(Option<Duration>, Option<Duration>)> {
    let mut o = Obj::new(cx, field, v)?;
    let scale_in = o.take("in").and_then(|v| duration(cx, &o.path("in"), &v));
    let scale_out = o.take("out").and_then(|v| duration(cx, &o.path("out"), &v));
    o.finish(cx);
    Some((scale_in, scale_out))
}

/// A scaling metric: its value, or `{ value, cooldown }`.
type MetricValue = (Option<Value>, Option<(Option<Duration>, Option<Duration>)>);

fn metric_value(cx: &mut Cx<'_>, field: &str, v: Value) -> MetricValue {
    if !v.is_mapping() {
        return (Some(v), None);
    }
    let Some(mut o) = Obj::new(cx, field, v) else { return (None, None) };
    let value = o.take("value");
    let cd = o.take("cooldown").and_then(|c| cooldown(cx, &format!("{field}.cooldown"), c));
    o.finish(cx);
    (value, cd)
}

fn boolean(cx: &mut Cx<'_>, field: &str, v: &Value) -> Option<bool> {
    let b = v.as_bool();
    if b.is_none() {
        cx.err(field, format!("expected true or false, found {}", kind(v)));
    }
    b
}

/// A port: a number or a string like `"8080"` or `"8080/tcp"`.
fn port(cx: &mut Cx<'_>, field: &str, v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.split('/').next().and_then(|p| p.trim().parse().ok()),
        _ => None,
    };
    match n {
        Some(p @ 1..=65535) => Some(p as u16),
        _ => {
            cx.err(field, format!("{v:?} is not a port (1..=65535)"));
            None
        }
    }
}

/// A Go duration string (`"30s"`, `"1m30s"`, `"500ms"`, `"1.5h"`), as Copilot writes them.
fn duration(cx: &mut Cx<'_>, field: &str, v: &Value) -> Option<Duration> {
    let d = v.as_str().and_then(go_duration);
    if d.is_none() {
        cx.err(field, format!("{v:?}: expected a duration like \"30s\" or \"1m30s\""));
    }
    d
}

fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok().map(|d| Duration::from_millis(d.as_millis() as u64))
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 60 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Planning: rule order, listeners, default actions.

/// A rule as it will be written.
#[derive(Debug, Clone)]
struct PlannedRule {
    route: Route,
    priority: u32,
    listeners: Vec<&'static str>,
}

/// The listeners' default actions and the rules, in order.
#[derive(Debug, Default)]
struct Plan {
    rules: Vec<PlannedRule>,
    /// `forward` target group of each listener's default action, by listener.
    defaults: BTreeMap<&'static str, (String, String)>,
    /// The http listener redirects to https by default.
    redirect: bool,
    https: bool,
    notes: Vec<Note>,
}

/// Sorts routes by specificity (see the module header).
fn order(routes: &mut [Route]) {
    routes.sort_by_key(|r| {
        let (segments, len) = r.path.as_ref().map_or((0, 0), |p| (p.matches('/').count(), p.len()));
        let conditions = usize::from(!r.hosts.is_empty()) + usize::from(!r.source_ips.is_empty());
        (r.path.is_none(), std::cmp::Reverse(segments), std::cmp::Reverse(len), std::cmp::Reverse(conditions), r.seq)
    });
}

fn plan(opts: &Options, services: &[Service]) -> Result<Plan, Vec<ImportError>> {
    let https = !opts.certificate_arns.is_empty();
    let mut plan = Plan { https, ..Plan::default() };
    plan.redirect = https && services.iter().flat_map(|s| &s.routes).any(|r| r.redirect != Some(false));
    if !https {
        // Only what the manifests say: Copilot's default needs no note.
        for r in services.iter().filter_map(|s| s.routes.first()).filter(|r| r.redirect == Some(true)) {
            plan.notes.push(Note {
                file: r.file.clone(),
                field: format!("{}.redirect_to_https (true)", r.field),
                reason: "no https listener to redirect to: pass --certificate-arn ARN".into(),
                kind: NoteKind::Unmapped,
            });
        }
    }
    let mut routes: Vec<Route> = services
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.routes.iter().map(move |r| Route { seq: (i, r.seq.1), ..r.clone() }))
        .collect();
    order(&mut routes);
    let mut errors = Vec::new();
    let mut priority = 0;
    for route in routes {
        let mut listeners: Vec<&'static str> = match (https, route.redirect != Some(false)) {
            (false, _) => vec!["http"],
            (true, true) => vec!["https"],
            (true, false) => vec!["http", "https"],
        };
        if route.path.is_none() && route.hosts.is_empty() && route.source_ips.is_empty() {
            // A catch-all: the default action of every listener whose default is free.
            listeners.retain(|&l| {
                if l == "http" && plan.redirect {
                    return true;
                }
                match plan.defaults.get(l) {
                    Some((other, file)) => {
                        errors.push(manifest_error(
                            &route.file,
                            format!(
                                "{}.path: '/' with no alias: {other:?} ({file}) already takes every request on the {l} listener",
                                route.field
                            ),
                        ));
                    }
                    None => {
                        plan.defaults.insert(l, (route.group.clone(), route.file.clone()));
                    }
                }
                false
            });
            if listeners.is_empty() {
                continue;
            }
        }
        priority += 10;
        plan.rules.push(PlannedRule { route, priority, listeners });
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing the configuration.

fn emit(
    opts: &Options,
    region: Option<&str>,
    manifests: &[Manifest],
    services: &[Service],
    plan: &Plan,
    notes: &[Note],
) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "# Made by `pilotfish import copilot` for application {:?}, environment {:?}, from:",
        opts.app, opts.env
    );
    for m in manifests {
        match services.iter().find(|s| s.file == m.file) {
            Some(s) => {
                let _ = writeln!(w, "#   {}: {SERVICE_TYPE} {:?}", m.file, s.name);
            }
            None => {
                let why = notes.iter().find(|n| n.file == m.file && n.kind == NoteKind::Skipped);
                let _ = writeln!(w, "#   {}: skipped: {}", m.file, why.map_or("", |n| n.reason.as_str()));
            }
        }
    }
    match opts.discovery {
        Discovery::CloudMap => {
            let _ = writeln!(
                w,
                "# Targets: Cloud Map, where Copilot registers each service (namespace \"{}.{}.local\").",
                opts.env, opts.app
            );
        }
        Discovery::Ecs => {
            let _ = writeln!(
                w,
                "# Targets: the RUNNING tasks of each ECS service in cluster {:?}.",
                opts.cluster.as_deref().unwrap_or("")
            );
        }
    }
    let _ = writeln!(w, "# Rules: ordered by path specificity (deeper and longer paths first, \"/\" last).");
    let _ = writeln!(w, "# What could not be mapped is listed, with why, above each service's target groups.");
    let _ = writeln!(w);

    let scaling = services.iter().any(|s| s.scaling.is_some());
    match region {
        Some(r) => {
            let _ = writeln!(w, "[aws]\nregion = {}\n", quote(r));
        }
        None => {
            let _ = writeln!(
                w,
                "# [aws] region: not set; the SDK takes AWS_REGION (config/ecs-task-definition.json sets it), or pass --region.\n"
            );
        }
    }
    if scaling {
        let _ = writeln!(
            w,
            "[cloudwatch]                       # autoscaling reads the metrics every replica publishes\nload_balancer = {}\n",
            quote(&format!("{}-{}", opts.app, opts.env))
        );
    }
    for (i, arn) in opts.certificate_arns.iter().enumerate() {
        let _ = writeln!(w, "[[certificates]]\nname = \"acm-{}\"\nacm = {}\n", i + 1, quote(arn));
    }

    let redirect = format!("{{ redirect = {{ protocol = \"https\", port = {PUBLIC_HTTPS_PORT}, status = 301 }} }}");
    let proxy = if opts.proxy_trusted.is_empty() {
        "# Behind deploy/cloudformation.yaml's NLB (PROXY protocol v2 on), every listener needs\n\
         # proxy_protocol = { trusted = [\"<the NLB's subnets or the VPC CIDR>\"] } (--proxy-trusted CIDR).\n"
            .to_string()
    } else {
        format!("proxy_protocol = {{ trusted = {} }}   # the NLB in front\n", string_list(&opts.proxy_trusted))
    };
    let _ = write!(w, "[[listeners]]\nname = \"http\"\nbind = \"0.0.0.0:{}\"\n{proxy}", opts.http_port);
    if plan.redirect {
        let _ = writeln!(w, "default_action = {redirect}   # redirect_to_https");
    } else if let Some((g, _)) = plan.defaults.get("http") {
        let _ = writeln!(w, "default_action = {{ forward = {} }}   # path \"/\"", quote(g));
    }
    if !plan.https {
        let _ = writeln!(
            w,
            "# No https listener: pass --certificate-arn ARN (an exportable ACM certificate) to get one on :{},\n\
             # or add a [[certificates]] (cert and key files) and an https [[listeners]] by hand.",
            opts.https_port
        );
    }
    let _ = writeln!(w);
    if plan.https {
        let names: Vec<String> = (1..=opts.certificate_arns.len()).map(|i| format!("acm-{i}")).collect();
        let _ = writeln!(
            w,
            "[[listeners]]\nname = \"https\"\nbind = \"0.0.0.0:{}\"\nprotocol = \"https\"\ncertificates = {}",
            opts.https_port,
            string_list(&names)
        );
        if !opts.proxy_trusted.is_empty() {
            let _ = write!(w, "{proxy}");
        }
        if let Some((g, _)) = plan.defaults.get("https") {
            let _ = writeln!(w, "default_action = {{ forward = {} }}   # path \"/\"", quote(g));
        }
        let _ = writeln!(w);
    }

    for r in &plan.rules {
        let route = &r.route;
        let _ = writeln!(w, "[[rules]]                          # {}: {}", route.file, route.field);
        let _ = writeln!(w, "name = {}", quote(&route.name));
        let _ = writeln!(w, "listeners = {}", string_list(&r.listeners));
        let _ = writeln!(w, "priority = {}", r.priority);
        if !route.hosts.is_empty() {
            let _ = writeln!(w, "host = {}", string_list(&route.hosts));
        }
        if let Some(p) = &route.path {
            let _ = writeln!(w, "path = {}", string_list(&path_patterns(p)));
        }
        if !route.source_ips.is_empty() {
            let _ = writeln!(w, "source_ip = {}", string_list(&route.source_ips));
        }
        let _ = writeln!(w, "forward = {}\n", quote(&route.group));
    }

    for s in services {
        let _ = writeln!(w, "# ---- {} ({}) ----", s.name, s.file);
        for n in &s.notes {
            let _ = writeln!(w, "# {}: {}: {}: {}", s.name, n.kind.as_str(), n.field, n.reason);
        }
        for n in plan.notes.iter().filter(|n| n.file == s.file) {
            let _ = writeln!(w, "# {}: {}: {}: {}", s.name, n.kind.as_str(), n.field, n.reason);
        }
        for (i, g) in s.groups.iter().enumerate() {
            group(w, opts, s, g, if i == 0 { s.scaling.as_ref() } else { None });
        }
    }
    o.truncate(o.trim_end().len());
    o.push('\n');
    o
}

fn group(w: &mut String, opts: &Options, s: &Service, g: &Group, scaling: Option<&Scaling>) {
    let _ = writeln!(w, "[[target_groups]]\nname = {}", quote(&g.name));
    let (protocol, why) = match g.version {
        Version::Http1 => ("http1", ""),
        Version::Http2 => ("http2", ""),
        Version::Grpc => ("http2", "                # version: grpc"),
    };
    let _ = writeln!(w, "protocol = \"{protocol}\"{why}");
    let _ = writeln!(w, "deregistration_delay = {}", quote(&fmt_duration(g.deregistration)));
    if g.port == 443 {
        // Copilot's target group speaks HTTPS to port 443 (health checks too), and ALB does
        // not verify target certificates.
        let _ = writeln!(w, "tls = {{ verify = false }}          # target port 443: HTTPS, as Copilot's target group");
    }
    if g.sticky {
        let _ = writeln!(w, "stickiness = {{ type = \"lb_cookie\" }}");
    }
    let h = &g.health;
    let _ = writeln!(w, "\n[target_groups.health_check]\npath = {}", quote(&h.path));
    if let Some(p) = h.port {
        let _ = writeln!(w, "port = {p}");
    }
    if let Some(i) = h.interval {
        let _ = writeln!(w, "interval = {}", quote(&fmt_duration(i)));
    }
    if let Some(t) = h.timeout {
        let _ = writeln!(w, "timeout = {}", quote(&fmt_duration(t)));
    }
    if let Some(n) = h.healthy {
        let _ = writeln!(w, "healthy_threshold = {n}");
    }
    if let Some(n) = h.unhealthy {
        let _ = writeln!(w, "unhealthy_threshold = {n}");
    }
    if let Some(m) = &h.matcher {
        let _ = writeln!(w, "matcher = {}", quote(m));
    }
    let _ = writeln!(w, "\n[target_groups.discovery]");
    match opts.discovery {
        Discovery::CloudMap => {
            let _ = writeln!(
                w,
                "cloud_map = {{ namespace = {}, service = {}, port = {} }}",
                quote(&format!("{}.{}.local", opts.env, opts.app)),
                quote(&s.name),
                g.port
            );
        }
        Discovery::Ecs => {
            let _ = writeln!(
                w,
                "ecs = {{ cluster = {}, service = {}, container_name = {}, container_port = {} }}",
                quote(opts.cluster.as_deref().unwrap_or_default()),
                quote(&s.ecs_service),
                quote(&g.container),
                g.port
            );
        }
    }
    if let Some(a) = scaling {
        let _ = writeln!(w, "\n[target_groups.autoscaling]        # count");
        let _ = writeln!(
            w,
            "ecs = {{ cluster = {}, service = {} }}",
            quote(opts.cluster.as_deref().unwrap_or_default()),
            quote(&s.ecs_service)
        );
        let _ = writeln!(w, "min = {}\nmax = {}", a.min, a.max);
        match a.metric {
            Metric::RequestCountPerTarget(t) => {
                let _ = writeln!(w, "metric = \"RequestCountPerTarget\"\ntarget = {t:?}");
            }
            Metric::TargetResponseTime(d) => {
                let _ = writeln!(w, "metric = \"TargetResponseTime\"\ntarget = {:?}", d.as_secs_f64());
            }
        }
        if let Some(d) = a.scale_out {
            let _ = writeln!(w, "scale_out_cooldown = {}", quote(&fmt_duration(d)));
        }
        if let Some(d) = a.scale_in {
            let _ = writeln!(w, "scale_in_cooldown = {}", quote(&fmt_duration(d)));
        }
    }
    let _ = writeln!(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    fn cx(file: &str) -> Cx<'_> {
        Cx { file, errors: Vec::new(), notes: Vec::new() }
    }

    #[test]
    fn paths_become_the_prefix_and_everything_under_it() {
        for p in ["/api", "api", "/api/", " api/ "] {
            assert_eq!(path_prefix(p).unwrap().as_deref(), Some("/api"), "{p:?}");
        }
        assert_eq!(path_patterns("/api/v2"), ["/api/v2", "/api/v2/*"]);
        for root in ["/", "", "//"] {
            assert_eq!(path_prefix(root).unwrap(), None, "{root:?}");
        }
        assert!(path_prefix("/a b").is_err());
    }

    fn route(name: &str, path: Option<&str>, hosts: &[&str], seq: (usize, usize)) -> Route {
        Route {
            name: name.into(),
            file: "m.yml".into(),
            field: "http".into(),
            path: path.map(str::to_owned),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            source_ips: Vec::new(),
            group: name.into(),
            redirect: Some(false),
            seq,
        }
    }

    #[test]
    fn rules_are_ordered_by_specificity_and_the_root_goes_last() {
        let mut routes = vec![
            route("root", None, &[], (0, 0)),
            route("root-host", None, &["a.example.com"], (0, 1)),
            route("api", Some("/api"), &[], (1, 0)),
            route("apiv2", Some("/api/v2"), &[], (1, 1)),
            route("apix", Some("/apix"), &[], (2, 0)),
            route("api-host", Some("/api"), &["api.example.com"], (3, 0)),
            route("api-later", Some("/api"), &[], (4, 0)),
        ];
        order(&mut routes);
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["apiv2", "apix", "api-host", "api", "api-later", "root-host", "root"]);
    }

    #[test]
    fn a_healthcheck_is_a_path_or_a_map() {
        let mut c = cx("m.yml");
        let h = healthcheck(&mut c, "http.healthcheck", yaml("/_health"), Version::Http1);
        assert_eq!(h, Health { path: "/_health".into(), ..Health::default() });

        let h = healthcheck(
            &mut c,
            "http.healthcheck",
            yaml("{path: /hc, port: 8081, success_codes: '200,301', healthy_threshold: 3, unhealthy_threshold: 4, interval: 1m30s, timeout: 10s, grace_period: 45s}"),
            Version::Http1,
        );
        assert_eq!(
            h,
            Health {
                path: "/hc".into(),
                port: Some(8081),
                matcher: Some("200,301".into()),
                healthy: Some(3),
                unhealthy: Some(4),
                interval: Some(Duration::from_secs(90)),
                timeout: Some(Duration::from_secs(10)),
            }
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let fields: Vec<&str> = c.notes.iter().map(|n| n.field.as_str()).collect();
        assert_eq!(fields, ["http.healthcheck.grace_period (\"45s\")"]);

        // A number of codes, and what pilotfish would refuse.
        let h = healthcheck(&mut c, "h", yaml("{success_codes: 204}"), Version::Http1);
        assert_eq!(h.matcher.as_deref(), Some("204"));
        healthcheck(
            &mut c,
            "h",
            yaml("{interval: 5s, timeout: 10s, healthy_threshold: 11, success_codes: abc}"),
            Version::Http1,
        );
        let errors: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("m.yml: h.success_codes: bad matcher"), "{errors:?}");
        assert!(errors[1].starts_with("m.yml: h.healthy_threshold:"), "{errors:?}");
        assert!(
            errors[2].starts_with("m.yml: h.timeout: 10s must be greater than 0 and at most the interval (5s)"),
            "{errors:?}"
        );

        // gRPC codes are not HTTP codes.
        let mut c = cx("m.yml");
        let h = healthcheck(&mut c, "h", yaml("{success_codes: '0-99'}"), Version::Grpc);
        assert_eq!((h.matcher, c.errors.len(), c.notes.len()), (None, 0, 1));
    }

    #[test]
    fn go_durations_parse() {
        for (s, ms) in
            [("30s", 30_000), ("1m30s", 90_000), ("500ms", 500), ("1.5h", 5_400_000), ("0", 0), ("2h45m", 9_900_000)]
        {
            assert_eq!(go_duration(s), Some(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "30", "s", "1d", "1m30"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn environment_overrides_merge_maps_deeply_and_replace_the_rest() {
        let mut base = yaml(
            "http: {path: api, alias: [a.example.com], healthcheck: {path: /hc, interval: 10s}}\ncount: {range: 1-5, requests: 100}\nvariables: {A: '1', B: '2'}",
        );
        merge(
            &mut base,
            yaml("http: {alias: b.example.com, healthcheck: {interval: 20s}}\ncount: 3\nvariables: {B: '3'}\nnew: x\ncpu: ~"),
        );
        let want = yaml(
            "http: {path: api, alias: b.example.com, healthcheck: {path: /hc, interval: 20s}}\ncount: 3\nvariables: {A: '1', B: '3'}\nnew: x",
        );
        assert_eq!(base, want);
    }

    #[test]
    fn aliases_come_in_three_forms() {
        let mut c = cx("m.yml");
        assert_eq!(aliases(&mut c, "a", yaml("x.example.com")), ["x.example.com"]);
        assert_eq!(aliases(&mut c, "a", yaml("[x.example.com, y.example.com]")), ["x.example.com", "y.example.com"]);
        assert_eq!(
            aliases(&mut c, "a", yaml("[{name: x.example.com, hosted_zone: Z1}, {name: y.example.com}]")),
            ["x.example.com", "y.example.com"]
        );
        assert!(c.errors.is_empty());
        assert_eq!(c.notes.len(), 1, "the hosted zone is noted");
        assert_eq!(c.notes[0].field, "a[0].hosted_zone (\"Z1\")");
        aliases(&mut c, "a", yaml("[{hosted_zone: Z1}, 'bad host!']"));
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
    }

    #[test]
    fn certificate_arns_name_their_region() {
        assert_eq!(acm_arn_region("arn:aws:acm:eu-west-1:123456789012:certificate/abc"), Some("eu-west-1"));
        assert_eq!(acm_arn_region("arn:aws-cn:acm:cn-north-1:1:certificate/x"), Some("cn-north-1"));
        for bad in ["", "arn:aws:s3:::bucket", "arn:aws:acm:us-east-1:1:certificate/", "arn:aws:acm::1:certificate/x"] {
            assert_eq!(acm_arn_region(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_target_follows_target_container_target_port_and_sidecars() {
        let ports = Ports {
            main: ("web".into(), Some(8080)),
            sidecars: [("envoy".to_string(), Some(9901)), ("nginx".to_string(), Some(80))].into(),
        };
        let mut c = cx("m.yml");
        assert_eq!(target(&mut c, "f", &ports, None, None), Some(("web".into(), 8080)));
        assert_eq!(target(&mut c, "f", &ports, Some("nginx".into()), None), Some(("nginx".into(), 80)));
        assert_eq!(target(&mut c, "f", &ports, Some("nginx".into()), Some(8443)), Some(("nginx".into(), 8443)));
        assert_eq!(target(&mut c, "f", &ports, None, Some(9901)), Some(("envoy".into(), 9901)), "a sidecar's port");
        assert_eq!(target(&mut c, "f", &ports, None, Some(9000)), Some(("web".into(), 9000)));
        assert!(c.errors.is_empty());
        assert_eq!(target(&mut c, "f", &ports, Some("nope".into()), None), None);
        assert_eq!(c.errors.len(), 1);
    }

    fn manifest(file: &str, text: &str) -> Manifest {
        Manifest { file: file.into(), text: text.into() }
    }

    const WEB: &str =
        "name: web\ntype: Load Balanced Web Service\nimage: {port: 8080}\nhttp: {path: /, redirect_to_https: true}\n";

    #[test]
    fn port_443_speaks_https_and_grpc_health_checks_are_flagged() {
        let m = "name: g\ntype: Load Balanced Web Service\nimage: {port: 443}\nhttp: {path: /g, version: grpc}\n";
        let got = import(&Options::new("shop", "prod"), &[manifest("g.yml", m)]).unwrap();
        let cfg: toml::Value = toml::from_str(&got.toml).unwrap();
        assert_eq!(cfg["target_groups"][0]["tls"]["verify"].as_bool(), Some(false), "{}", got.toml);
        assert_eq!(cfg["target_groups"][0]["protocol"].as_str(), Some("http2"));
        let n: Vec<_> = got.notes.iter().filter(|n| n.kind == NoteKind::Assumed).collect();
        assert_eq!(n.len(), 1, "{:?}", got.notes);
        assert!(n[0].reason.contains("gRPC"), "{:?}", n[0]);
        // With success_codes, the not-mapped note says it; no second one.
        let m = "name: g\ntype: Load Balanced Web Service\nimage: {port: 8080}\nhttp: {path: /g, version: grpc, healthcheck: {path: /h, success_codes: '0'}}\n";
        let got = import(&Options::new("shop", "prod"), &[manifest("g.yml", m)]).unwrap();
        assert!(got.notes.iter().all(|n| n.kind != NoteKind::Assumed), "{:?}", got.notes);
        assert!(!got.toml.contains("tls ="), "port 8080 is plaintext");
    }

    #[test]
    fn a_root_without_conditions_is_the_default_action_and_http_redirects() {
        let mut opts = Options::new("shop", "prod");
        opts.certificate_arns = vec!["arn:aws:acm:eu-west-1:123456789012:certificate/abc".into()];
        let api = "name: api\ntype: Load Balanced Web Service\nimage: {port: 80}\nhttp: {path: /api, redirect_to_https: false, additional_rules: [{path: /api/r, redirect_to_https: true}]}\n";
        let adm = "name: adm\ntype: Load Balanced Web Service\nimage: {port: 80}\nhttp: {path: /adm, redirect_to_https: true, additional_rules: [{path: /adm/x}]}\n";
        let got =
            import(&opts, &[manifest("web.yml", WEB), manifest("api.yml", api), manifest("adm.yml", adm)]).unwrap();
        let cfg: toml::Value = toml::from_str(&got.toml).unwrap();
        assert_eq!(cfg["aws"]["region"].as_str(), Some("eu-west-1"));
        let listeners = cfg["listeners"].as_array().unwrap();
        assert_eq!(listeners[0]["default_action"]["redirect"]["port"].as_integer(), Some(443));
        assert_eq!(listeners[1]["default_action"]["forward"].as_str(), Some("web"));
        let rules = cfg["rules"].as_array().unwrap();
        let listeners_of = |name: &str| {
            rules.iter().find(|r| r["name"].as_str() == Some(name)).map(|r| r["listeners"].clone()).unwrap()
        };
        assert_eq!(rules.len(), 4, "the root is no rule: {}", got.toml);
        assert_eq!(listeners_of("api"), toml::Value::from(vec!["http", "https"]));
        // An additional rule says for itself.
        assert_eq!(listeners_of("api-1"), toml::Value::from(vec!["https"]));
        // A redirecting service's additional rules redirect too.
        assert_eq!(listeners_of("adm"), toml::Value::from(vec!["https"]));
        assert_eq!(listeners_of("adm-1"), toml::Value::from(vec!["https"]));
        assert!(got.notes.is_empty(), "{:?}", got.notes);

        // Without a certificate: the root forwards on http; the redirect is reported.
        let got = import(&Options::new("shop", "prod"), &[manifest("web.yml", WEB)]).unwrap();
        let cfg: toml::Value = toml::from_str(&got.toml).unwrap();
        assert_eq!(cfg["listeners"][0]["default_action"]["forward"].as_str(), Some("web"));
        assert_eq!(got.notes.len(), 1);
        assert_eq!(got.notes[0].field, "http.redirect_to_https (true)");

        // Unset, it is Copilot's default (true): https only, and no note without a certificate.
        let plain = "name: p\ntype: Load Balanced Web Service\nimage: {port: 80}\nhttp: {path: /p}\n";
        let got = import(&opts, &[manifest("p.yml", plain)]).unwrap();
        let cfg: toml::Value = toml::from_str(&got.toml).unwrap();
        assert_eq!(cfg["rules"][0]["listeners"], toml::Value::from(vec!["https"]));
        assert!(import(&Options::new("shop", "prod"), &[manifest("p.yml", plain)]).unwrap().notes.is_empty());
    }

    #[test]
    fn two_catch_alls_on_one_listener_are_an_error() {
        let other = WEB.replace("name: web", "name: other");
        let err = import(&Options::new("shop", "prod"), &[manifest("web.yml", WEB), manifest("other.yml", &other)])
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .starts_with("other.yml: http.path: '/' with no alias: \"web\" (web.yml) already takes every request"),
            "{}",
            err[0]
        );
        // And two manifests of one service.
        let err = import(&Options::new("shop", "prod"), &[manifest("a.yml", WEB), manifest("b.yml", WEB)]).unwrap_err();
        assert_eq!(err[0].to_string(), "b.yml: name: a second service named \"web\"");
    }

    #[test]
    fn options_are_checked() {
        let mut opts = Options::new("shop", "prod");
        opts.discovery = Discovery::Ecs;
        assert!(import(&opts, &[]).unwrap_err()[0].to_string().contains("--cluster"));
        let mut opts = Options::new("shop", "prod");
        opts.region = Some("us-east-1".into());
        opts.certificate_arns = vec!["arn:aws:acm:eu-west-1:1:certificate/x".into()];
        assert!(import(&opts, &[]).unwrap_err()[0].to_string().contains("is in eu-west-1, not in us-east-1"));
        let opts = Options::new("shop", "prod");
        let skipped = "name: w\ntype: Worker Service\n";
        assert!(import(&opts, &[manifest("w.yml", skipped)]).unwrap_err()[0].to_string().contains("nothing to import"));
    }

    #[test]
    fn an_unknown_field_is_reported_with_a_reason() {
        assert!(why_unmapped("http.additional_rules[3].hosted_zone").starts_with("Route 53"));
        assert!(why_unmapped("count").starts_with("the desired task count"));
        assert!(why_unmapped("frobnicate").starts_with("not a Load Balanced Web Service field"));
    }
}
