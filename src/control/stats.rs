//! What the dashboard shows (`GET /stats` on the admin port, read by the page at `GET /`): the
//! configuration in force as the operator wrote it (listeners, their rules in priority order,
//! certificates and their expiry), every target's state, and per target group a few minutes of
//! history — requests per second, 5xx share, p50 and p99 of the target response time — plus the
//! reload history.
//!
//! The history costs the request path nothing: every [`INTERVAL`] the control thread reads the
//! counters the data plane keeps anyway, as the CloudWatch publisher reads them
//! ([`super::cloudwatch::totals`]: response codes per group over every listener, the target
//! response histogram, summed over the workers' shards) and keeps the differences in a ring
//! of [`WINDOW`] / [`INTERVAL`] points. Percentiles come from the histogram's buckets (linear
//! within a bucket, as Prometheus' `histogram_quantile` does), so they are as coarse as the
//! buckets.
//!
//! The JSON's field names are documented in the README ("Dashboard") and stable.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::Control;
use crate::telemetry::metrics::BUCKETS;

/// Time between two points of history.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How much history is kept.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Reload outcomes kept.
pub const RELOADS: usize = 20;

const POINTS: usize = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize;

/// One interval of one target group.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    rps: f64,
    /// 5xx share; None when nothing was answered.
    error_rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// A group's counters when last read.
#[derive(Debug, Clone, Copy)]
struct Totals {
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len() + 1],
}

/// The history: points per group, oldest first, and the counters they were computed from.
#[derive(Debug, Default)]
pub struct Ring {
    times: VecDeque<f64>,
    groups: HashMap<Arc<str>, VecDeque<Option<Point>>>,
    last: HashMap<Arc<str>, Totals>,
    last_at: Option<std::time::Instant>,
}

/// One reload, as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub generation: u64,
    pub ok: bool,
    pub errors: Vec<String>,
}

/// The reload history, newest last.
#[derive(Debug, Default)]
pub struct Reloads(pub Mutex<VecDeque<ReloadRecord>>);

impl Reloads {
    /// Adds one outcome (the oldest goes beyond [`RELOADS`]).
    pub fn record(&self, generation: u64, ok: bool, errors: Vec<String>) {
        let mut r = self.0.lock().expect("reload history");
        if r.len() == RELOADS {
            r.pop_front();
        }
        r.push_back(ReloadRecord { at: SystemTime::now(), generation, ok, errors });
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `q` quantile (0..1) of observations counted per bucket, in ms; None without any.
fn quantile(buckets: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            // Beyond the last bound: the last bound is all that is known.
            let Some(&upper) = BUCKETS.get(i) else { return Some(lower * 1000.0) };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        seen += n;
    }
    Some(BUCKETS[BUCKETS.len() - 1] * 1000.0)
}

impl Ring {
    /// Reads the counters of every group of the snapshot in force and appends one point each.
    pub fn sample(&mut self, control: &Control) {
        let state = &control.state;
        let snap = state.load();
        let now = std::time::Instant::now();
        let elapsed = self.last_at.map_or(INTERVAL, |t| now - t).as_secs_f64().max(0.001);
        self.last_at = Some(now);
        // The same reading as the CloudWatch publisher's: requests and 5xx (the targets' and
        // the balancer's own) per group over every listener, and the target response buckets.
        let all = super::cloudwatch::totals(state);
        let mut totals: HashMap<Arc<str>, Totals> = HashMap::new();
        let mut names = Vec::new();
        for g in snap.target_groups() {
            let counts = all.groups.get(&g.name);
            let count = |k: &str| counts.and_then(|c| c.get(k)).copied().unwrap_or(0);
            totals.insert(
                g.name.clone(),
                Totals {
                    requests: count("RequestCount"),
                    errors: count("HTTPCode_Target_5XX_Count") + count("HTTPCode_ELB_5XX_Count"),
                    buckets: all.latency.get(&g.name).copied().unwrap_or([0; BUCKETS.len() + 1]),
                },
            );
            names.push(g.name.clone());
        }
        if self.times.len() == POINTS {
            self.times.pop_front();
        }
        self.times.push_back(unix(SystemTime::now()));
        let len = self.times.len();
        // Groups gone with a reload leave the history; new ones start with gaps.
        let current: std::collections::HashSet<&Arc<str>> = names.iter().collect();
        self.groups.retain(|name, _| current.contains(name));
        for name in names {
            let t = totals[&name];
            let point = self.last.get(&name).map(|prev| {
                let requests = t.requests.saturating_sub(prev.requests);
                let errors = t.errors.saturating_sub(prev.errors);
                let mut delta = [0u64; BUCKETS.len() + 1];
                for (d, (a, b)) in delta.iter_mut().zip(t.buckets.iter().zip(&prev.buckets)) {
                    *d = a.saturating_sub(*b);
                }
                Point {
                    rps: requests as f64 / elapsed,
                    // (Codes are read one after the other: a few answers may land in between.)
                    error_rate: (requests > 0).then(|| (errors as f64 / requests as f64).min(1.0)),
                    p50_ms: quantile(&delta, 0.5),
                    p99_ms: quantile(&delta, 0.99),
                }
            });
            self.last.insert(name.clone(), t);
            let series = self.groups.entry(name).or_default();
            series.push_back(point);
            while series.len() > len {
                series.pop_front();
            }
            while series.len() < len {
                series.push_front(None);
            }
        }
        self.last.retain(|name, _| self.groups.contains_key(name));
    }

    /// The history of `group` as the JSON's `series`.
    fn series(&self, group: &str) -> Value {
        let points: Vec<Option<Point>> =
            self.groups.get(group).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let skip = self.times.len() - points.len().min(self.times.len());
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "time": self.times.iter().skip(skip).map(|t| t.round() as u64).collect::<Vec<_>>(),
            "requests_per_second": points.iter().map(|p| p.map(|p| round(p.rps))).collect::<Vec<_>>(),
            "error_rate": points.iter().map(|p| p.and_then(|p| p.error_rate).map(round)).collect::<Vec<_>>(),
            "p50_ms": points.iter().map(|p| p.and_then(|p| p.p50_ms).map(round)).collect::<Vec<_>>(),
            "p99_ms": points.iter().map(|p| p.and_then(|p| p.p99_ms).map(round)).collect::<Vec<_>>(),
        })
    }
}

/// Samples every [`INTERVAL`] until the control runtime stops.
pub async fn run(control: Arc<Control>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        control.stats.lock().expect("stats ring").sample(&control);
    }
}

/// A one-line description of an action as written (`forward`, `redirect`, `fixed_response`).
fn describe_action(a: &Value) -> Option<String> {
    if let Some(f) = a.get("forward") {
        let arms = |list: &Vec<Value>| {
            list.iter()
                .map(|w| format!("{} ({})", w["target_group"].as_str().unwrap_or("?"), w["weight"]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(match f {
            Value::String(g) => format!("forward {g}"),
            Value::Array(list) => format!("forward {}", arms(list)),
            Value::Object(t) => {
                let list = t.get("target_groups").and_then(Value::as_array).map(arms).unwrap_or_default();
                match t.get("stickiness").and_then(Value::as_str) {
                    Some(s) => format!("forward {list}, sticky {s}"),
                    None => format!("forward {list}"),
                }
            }
            _ => "forward".into(),
        });
    }
    if let Some(r) = a.get("redirect") {
        let part = |k: &str, default: &str| {
            r.get(k).map_or(default.to_string(), |v| v.as_str().map_or(v.to_string(), str::to_string))
        };
        return Some(format!(
            "redirect {} to {}://{}:{}{}",
            r.get("status").map_or("301".into(), |s| s.to_string()),
            part("protocol", "#{protocol}"),
            part("host", "#{host}"),
            part("port", "#{port}"),
            part("path", "/#{path}"),
        ));
    }
    let f = a.get("fixed_response")?;
    Some(format!("fixed response {}", f.get("status").map_or("200".into(), |s| s.to_string())))
}

/// A rule's conditions as written: `{kind, values}` each.
fn conditions(rule: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for kind in ["host", "path", "method", "source_ip"] {
        if let Some(v) = rule.get(kind) {
            out.push(json!({ "kind": kind, "values": v }));
        }
    }
    for (key, prefix) in [("headers", "header"), ("query", "query")] {
        if let Some(map) = rule.get(key).and_then(Value::as_object) {
            for (name, values) in map {
                out.push(json!({ "kind": format!("{prefix} {name}"), "values": values }));
            }
        }
    }
    if let Some(j) = rule.get("jwt") {
        out.push(json!({ "kind": "jwt", "values": [j.get("issuer").cloned().unwrap_or(Value::Null)] }));
    }
    out
}

/// The whole `GET /stats` answer.
pub fn render(control: &Control) -> Value {
    let state = &control.state;
    let snap = state.load();
    let now = SystemTime::now();
    let cfg = &snap.json;
    let rules: Vec<&Value> = cfg.get("rules").and_then(Value::as_array).map(|r| r.iter().collect()).unwrap_or_default();
    let certs: HashMap<&str, &crate::config::snapshot::CertificateInfo> =
        snap.certificates.iter().map(|c| (&*c.name, c)).collect();
    let listeners: Vec<Value> = snap
        .listeners
        .iter()
        .map(|l| {
            let written = cfg
                .get("listeners")
                .and_then(Value::as_array)
                .and_then(|ls| ls.iter().find(|w| w["name"].as_str() == Some(&l.name)));
            let mut mine: Vec<&&Value> = rules
                .iter()
                .filter(|r| r["listeners"].as_array().is_some_and(|ls| ls.iter().any(|n| n.as_str() == Some(&l.name))))
                .collect();
            mine.sort_by_key(|r| r["priority"].as_u64().unwrap_or(u64::MAX));
            let certificates: Vec<Value> = written
                .and_then(|w| w.get("certificates"))
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| certs.get(n.as_str()?))
                        .map(|c| {
                            let left = c.not_after.duration_since(now).map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
                            json!({ "name": &*c.name, "not_after": rfc3339(c.not_after), "days_left": (left / 864.0).round() / 100.0 })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let bind = control.listener_addr(&l.name).unwrap_or(l.bind);
            json!({
                "name": &*l.name,
                "bind": bind.to_string(),
                "protocol": if l.tls.is_some() { "https" } else { "http" },
                "active_connections": l.stats.active_connections.load(std::sync::atomic::Ordering::Relaxed),
                "certificates": certificates,
                "default_action": written.and_then(|w| w.get("default_action")).and_then(describe_action).unwrap_or_else(|| "404 (built-in)".into()),
                "rules": mine.iter().map(|r| json!({
                    "name": r["name"],
                    "priority": r["priority"],
                    "conditions": conditions(r),
                    "action": describe_action(r).unwrap_or_default(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let autoscaled: HashMap<String, i64> =
        state.metrics.autoscaling_all().into_iter().map(|(g, d)| (g.to_string(), d)).collect();
    let ring = control.stats.lock().expect("stats ring");
    let groups: Vec<Value> = snap
        .target_groups()
        .map(|g| {
            let status = state.discovery.get(&g.name).map(|s| s.clone()).unwrap_or_default();
            let autoscaling = snap.autoscaling.iter().any(|(n, _)| n == &g.name).then(|| {
                let last = state.metrics.autoscaling_decision_of(&g.name);
                json!({
                    "desired": autoscaled.get(&*g.name),
                    "last_decision": last.as_ref().map(|(_, what)| what),
                    "last_decision_time": last.map(|(at, _)| rfc3339(at)),
                })
            });
            json!({
                "name": &*g.name,
                "source": snap.discovery_of(&g.name).map_or("static", |d| d.source()),
                "last_refresh": status.last_refresh_unix_ms.map(|ms| rfc3339(UNIX_EPOCH + Duration::from_millis(ms))),
                "discovery_error": status.last_error,
                "fail_open": g.is_fail_open(),
                "autoscaling": autoscaling,
                "targets": g.targets().targets().iter().map(|t| json!({
                    "address": t.addr.to_string(),
                    "state": t.state().as_str(),
                    "reason": t.reason().as_str(),
                    "in_flight": t.in_flight(),
                    "weight": t.weight(),
                })).collect::<Vec<_>>(),
                "series": ring.series(&g.name),
            })
        })
        .collect();
    drop(ring);
    let history = control.reloads.0.lock().expect("reload history");
    let reloads: Vec<Value> = history
        .iter()
        .map(|r| {
            json!({
                "time": rfc3339(r.at),
                "generation": r.generation,
                "result": if r.ok { "success" } else { "failure" },
                "errors": r.errors,
            })
        })
        .collect();
    // The latest reload's errors, if it failed (a good one after a failure clears it).
    let last_error = history.back().filter(|r| !r.ok).map(|r| r.errors.join("\n"));
    drop(history);
    let phase = if state.is_draining() {
        "draining"
    } else if state.is_ready() {
        "ready"
    } else {
        "starting"
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": (unix(now) * 1000.0).round() / 1000.0,
        "state": phase,
        "generation": snap.generation,
        "interval_seconds": INTERVAL.as_secs(),
        "window_seconds": WINDOW.as_secs(),
        "listeners": listeners,
        "target_groups": groups,
        "reloads": reloads,
        "last_reload_error": last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut b = [0u64; BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        // 100 observations in (1ms, 2.5ms]: the median halfway, p99 near the top.
        b[1] = 100;
        assert!((quantile(&b, 0.5).unwrap() - 1.75).abs() < 1e-9);
        assert!((quantile(&b, 0.99).unwrap() - 2.485).abs() < 1e-9);
        // One slow outlier beyond every bound: p99 of 100 stays in the fast bucket, the max is 30s.
        b[1] = 99;
        b[BUCKETS.len()] = 1;
        assert!(quantile(&b, 0.99).unwrap() <= 2.5);
        assert_eq!(quantile(&b, 1.0), Some(30_000.0));
    }

    #[test]
    fn actions_and_conditions_read_as_written() {
        assert_eq!(describe_action(&json!({ "forward": "api" })).unwrap(), "forward api");
        let w = json!({ "forward": [{ "target_group": "a", "weight": 90 }, { "target_group": "b", "weight": 10 }] });
        assert_eq!(describe_action(&w).unwrap(), "forward a (90), b (10)");
        let r = json!({ "redirect": { "protocol": "https", "port": 443, "status": 301 } });
        assert_eq!(describe_action(&r).unwrap(), "redirect 301 to https://#{host}:443/#{path}");
        assert_eq!(describe_action(&json!({ "fixed_response": { "status": 404 } })).unwrap(), "fixed response 404");
        let c = conditions(&json!({ "host": ["a.example"], "headers": { "x-t": ["<script>"] } }));
        assert_eq!(
            c,
            vec![
                json!({ "kind": "host", "values": ["a.example"] }),
                json!({ "kind": "header x-t", "values": ["<script>"] })
            ]
        );
    }
}
