//! The admin API on `server.admin_bind`: `/healthz`, `/readyz`, `/metrics`, `/config`,
//! `/targets`, `/stats`, `POST /reload`, and the dashboard at `/` (its page, script and style
//! sheet embedded in the binary, from `dashboard/`). Served on the control thread, never on the
//! data plane. With `server.admin_token`, every path but `/healthz`, `/readyz` and the
//! dashboard's three files (which hold no data: the page asks for the token to read `/stats`)
//! needs `Authorization: Bearer TOKEN` (401 otherwise; compared in constant time).
//!
//! The dashboard's files are served with a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline code, no framing, fetches to this origin only) and
//! `X-Frame-Options: DENY`; the script renders every value from `/stats` as text.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::Control;
use crate::balance::TargetState;
use crate::telemetry::metrics::esc;

/// The queue metrics of the groups that have one: depth, waits, refusals.
fn render_queues(
    snap: &crate::config::snapshot::Snapshot,
    metrics: &crate::telemetry::metrics::Metrics,
    out: &mut String,
) {
    let queued: Vec<_> =
        snap.target_groups().filter(|g| g.queue.is_some() || g.settings.max_requests_per_target > 0).collect();
    out.push_str("# HELP pilotfish_queue_depth Requests waiting for a target under max_requests_per_target.\n# TYPE pilotfish_queue_depth gauge\n");
    for g in &queued {
        let depth = g.queue.as_ref().map_or(0, |q| q.depth());
        let _ = writeln!(out, "pilotfish_queue_depth{{target_group=\"{}\"}} {depth}", esc(&g.name));
    }
    out.push_str("# HELP pilotfish_queue_wait_seconds Time queued requests waited for a target.\n# TYPE pilotfish_queue_wait_seconds histogram\n");
    for g in &queued {
        metrics.group(&g.name).queue_wait.render(
            out,
            "pilotfish_queue_wait_seconds",
            &format!("target_group=\"{}\"", esc(&g.name)),
        );
    }
    out.push_str("# HELP pilotfish_queue_rejected_total Requests answered 503 by the queue, by reason.\n# TYPE pilotfish_queue_rejected_total counter\n");
    for g in &queued {
        let stats = metrics.group(&g.name);
        for (reason, n) in [("queue_full", &stats.queue_full), ("queue_timeout", &stats.queue_timeout)] {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                out,
                "pilotfish_queue_rejected_total{{target_group=\"{}\",reason=\"{reason}\"}} {n}",
                esc(&g.name)
            );
        }
    }
}

/// Serves the admin API on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, control: Arc<Control>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(error = %e, "admin API: accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(route(&control, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The dashboard: page, script, style sheet.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// What the dashboard's files may do: load their own script and style, fetch from this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'";

/// A dashboard file, with the headers that keep it from being framed, sniffed or cached.
fn asset(ctype: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, ctype, body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// Paths served without the admin token: probes, and the dashboard's files (no data in them).
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/" | "/dashboard.js" | "/dashboard.css")
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", serde_json::to_vec_pretty(&v).unwrap_or_default())
}

/// Whether `req` may read a path behind the admin token.
fn authorized(control: &Control, req: &Request<Incoming>) -> bool {
    let snap = control.state.load();
    let Some(token) = &snap.server.admin_token else { return true };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else { return false };
    let v = value.as_bytes();
    match v.iter().position(|&b| b == b' ') {
        Some(i) if v[..i].eq_ignore_ascii_case(b"bearer") => token.matches(v[i + 1..].trim_ascii()),
        _ => false,
    }
}

/// The refusal of `req` unless it names this API the way only its operator would. Without a token, only an IP
/// address or `localhost` in `Host`: a web page whose name was rebound to this address (DNS
/// rebinding) must not read it. Never a state change from another site's page (`Origin` not
/// this host, or `Sec-Fetch-Site: cross-site`): a form or `fetch` from any page the operator
/// visits could otherwise POST /reload.
fn same_site(control: &Control, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if control.state.load().server.admin_token.is_none() {
        if let Some(h) = host {
            let name = match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => h.rsplit_once(':').map_or(h, |(n, _)| n),
            };
            if name.parse::<std::net::IpAddr>().is_err() && !name.eq_ignore_ascii_case("localhost") {
                return Some(reply(
                    StatusCode::MISDIRECTED_REQUEST,
                    "text/plain",
                    "this admin API answers to its IP address or localhost; set admin_token to reach it by another name\n",
                ));
            }
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let cross_fetch = req.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
        let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let foreign = origin.is_some_and(|o| {
            let authority = o.split_once("://").map_or(o, |(_, a)| a);
            Some(authority) != host
        });
        if cross_fetch || foreign {
            return Some(reply(StatusCode::FORBIDDEN, "text/plain", "forbidden: a request from another site\n"));
        }
    }
    None
}

async fn route(control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &control.state;
    if let Some(refused) = same_site(control, &req) {
        return refused;
    }
    if !open_path(req.uri().path()) && !authorized(control, &req) {
        let mut r =
            reply(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized: send Authorization: Bearer <admin_token>\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"pilotfish\""));
        return r;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/") => asset("text/html; charset=utf-8", DASHBOARD_HTML),
        (&Method::GET, "/dashboard.js") => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
        (&Method::GET, "/dashboard.css") => asset("text/css; charset=utf-8", DASHBOARD_CSS),
        (&Method::GET, "/stats") => {
            // Compact: the page reads it every 2 s.
            let body = serde_json::to_vec(&super::stats::render(control)).unwrap_or_default();
            let mut r = reply(StatusCode::OK, "application/json", body);
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
            r
        }
        (&Method::GET, "/readyz") => {
            if state.is_ready() {
                // Ready even with empty discovered groups (they answer 503 until targets arrive),
                // but say which, so an operator sees why.
                let snap = state.load();
                let empty: Vec<&str> = snap
                    .discovery
                    .iter()
                    .filter(|(g, _)| snap.target_group(g).is_some_and(|g| g.targets().registered_specs().is_empty()))
                    .map(|(g, _)| &**g)
                    .collect();
                let body = if empty.is_empty() {
                    "ready\n".to_string()
                } else {
                    format!("ready; empty target groups: {}\n", empty.join(", "))
                };
                reply(StatusCode::OK, "text/plain", body)
            } else if state.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let snap = state.load();
            let text = state.metrics.render(|out| {
                out.push_str("# HELP pilotfish_targets Targets by group and state.\n# TYPE pilotfish_targets gauge\n");
                for g in snap.target_groups() {
                    let set = g.targets();
                    for s in TargetState::ALL {
                        let n = set.targets().iter().filter(|t| t.state() == s).count();
                        let _ = writeln!(
                            out,
                            "pilotfish_targets{{target_group=\"{}\",state=\"{}\"}} {n}",
                            esc(&g.name),
                            s.as_str()
                        );
                    }
                }
                out.push_str(
                    "# HELP pilotfish_target_group_fail_open 1 while a group has no healthy target and routes to its unhealthy ones.\n# TYPE pilotfish_target_group_fail_open gauge\n",
                );
                for g in snap.target_groups() {
                    let fo = u8::from(g.is_fail_open());
                    let _ = writeln!(out, "pilotfish_target_group_fail_open{{target_group=\"{}\"}} {fo}", esc(&g.name));
                }
                out.push_str(
                    "# HELP pilotfish_worker_connections Open client connections per data-plane worker.\n# TYPE pilotfish_worker_connections gauge\n",
                );
                for (i, n) in control.workers().open_connections().enumerate() {
                    let _ = writeln!(out, "pilotfish_worker_connections{{worker=\"{i}\"}} {n}");
                }
                render_queues(&snap, &state.metrics, out);
                super::certificates::render_expiry(&snap, out);
                out.push_str("# HELP pilotfish_jwks_keys Verification keys held per JSON Web Key Set.\n# TYPE pilotfish_jwks_keys gauge\n");
                for k in &snap.jwks {
                    let _ = writeln!(out, "pilotfish_jwks_keys{{jwks=\"{}\"}} {}", esc(&k.source.url), k.status().0);
                }
                out.push_str("# HELP pilotfish_jwks_age_seconds Time since the key set was last read successfully (absent: never).\n# TYPE pilotfish_jwks_age_seconds gauge\n");
                for k in &snap.jwks {
                    if let Some(age) = k.status().1 {
                        let _ = writeln!(out, "pilotfish_jwks_age_seconds{{jwks=\"{}\"}} {:.0}", esc(&k.source.url), age.as_secs_f64());
                    }
                }
            });
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::GET, "/config") => {
            let mut json = state.load().json.clone();
            let doc = control.in_force().doc;
            if let Some(o) = json.as_object_mut() {
                o.insert("source".into(), json!({ "location": doc.name, "version": doc.version }));
            }
            json_reply(StatusCode::OK, json)
        }
        (&Method::GET, "/targets") => {
            let snap = state.load();
            let groups: Vec<_> = snap
                .target_groups()
                .map(|g| {
                    let set = g.targets();
                    let source = snap.discovery_of(&g.name).map_or("static", |d| d.source());
                    let status = state.discovery.get(&g.name).map(|s| s.clone()).unwrap_or_default();
                    json!({
                        "name": &*g.name,
                        "source": source,
                        "last_refresh": status.last_refresh_unix_ms.map(|ms| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()),
                        "discovery_error": status.last_error,
                        "fail_open": g.is_fail_open(),
                        "max_requests_per_target": g.settings.max_requests_per_target,
                        "queue": g.queue.as_ref().map(|q| json!({
                            "depth": q.depth(),
                            "size": q.size,
                            "timeout": humantime::format_duration(q.timeout).to_string(),
                        })),
                        "targets": set.targets().iter().map(|t| {
                            let last = t.last_check();
                            json!({
                                "address": t.addr.to_string(),
                                "state": t.state().as_str(),
                                "reason": t.reason().as_str(),
                                "in_flight": t.in_flight(),
                                "slow_start_share": t.slow_start_factor(g.settings.slow_start, crate::balance::target::now_ms()),
                                "weight": t.weight(),
                                "source": source,
                                "last_check": last.map(|(_, r)| r),
                                "last_check_time": last.map(|(ms, _)| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()),
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_reply(StatusCode::OK, json!({ "generation": snap.generation, "target_groups": groups }))
        }
        (&Method::POST, "/reload") => {
            let out = control.reload().await;
            let status = if out.ok() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            json_reply(
                status,
                json!({
                    "result": if out.ok() { "success" } else { "failure" },
                    "generation": out.generation,
                    "errors": out.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "warnings": out.warnings.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                }),
            )
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/targets" | "/stats" | "/reload" | "/" | "/dashboard.js"
            | "/dashboard.css",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try / (the dashboard) /healthz /readyz /metrics /config /targets /stats, POST /reload\n",
        ),
    }
}
