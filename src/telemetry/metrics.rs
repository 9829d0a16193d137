//! Process metrics: plain atomics owned by the data plane, registered once per label set by the
//! control plane (when a snapshot is compiled) and rendered as Prometheus text on scrape.
//!
//! Written by hand rather than with `prometheus-client` on purpose: its histogram takes a lock per
//! observation and its families hash the label set per increment; here the request path holds an
//! `Arc` to its counters (resolved at compile time) and only does relaxed atomic adds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::auth::jwt::{JwtStats, Reason};
use crate::proxy::proxy_protocol::Refused;
use crate::shard::{Counter, Sharded};
use crate::tls::mtls::Failure;

/// Histogram bucket upper bounds in seconds (ALB-ish latency range).
pub const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One worker's share of a [`Histogram`]: a count per bucket, the last one +Inf (the total is
/// their sum, so a reader never sees an observation counted but in no bucket).
#[derive(Debug, Default)]
struct HistogramShard {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A lock-free latency histogram, sharded per worker ([`crate::shard`]): an observation touches
/// only the calling worker's cache lines; readers sum the shards.
#[derive(Debug, Default)]
pub struct Histogram {
    shards: Sharded<HistogramShard>,
}

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let h = self.shards.local();
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.shards.iter().flat_map(|h| h.buckets.iter()).map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Per-bucket counts (not cumulative; upper bounds in [`BUCKETS`], then +Inf), count and sum
    /// in µs, summed over the shards.
    pub fn snapshot(&self) -> ([u64; BUCKETS.len() + 1], u64, u64) {
        let (mut b, mut sum) = ([0u64; BUCKETS.len() + 1], 0);
        for h in self.shards.iter() {
            for (i, c) in h.buckets.iter().enumerate() {
                b[i] += c.load(Ordering::Relaxed);
            }
            sum += h.sum_micros.load(Ordering::Relaxed);
        }
        (b, b.iter().sum(), sum)
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (b, count, sum) = self.snapshot();
        let mut cum = 0;
        for (bound, c) in BUCKETS.iter().zip(&b) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Response counts by status code for one (listener, target group) pair, sharded per worker.
#[derive(Debug)]
pub struct CodeCounters {
    shards: Sharded<Box<[AtomicU64]>>,
}

impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters { shards: Sharded::new_with(|_| (0..600).map(|_| AtomicU64::new(0)).collect()) }
    }
}

impl CodeCounters {
    /// Counts one response with `status`.
    #[inline]
    pub fn inc(&self, status: u16) {
        if let Some(c) = self.shards.local().get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses counted with `status`.
    pub fn get(&self, status: u16) -> u64 {
        self.shards.iter().map(|s| s.get(status as usize).map_or(0, |c| c.load(Ordering::Relaxed))).sum()
    }

    /// Sum over all codes.
    pub fn total(&self) -> u64 {
        self.shards.iter().flat_map(|s| s.iter()).map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one target group that response codes alone do not give (ALB's
/// `HTTPCode_ELB_*` versus `HTTPCode_Target_*`, `TargetConnectionErrorCount`).
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Answers the balancer gave instead of a target (502, 503, 504), by class.
    pub elb_4xx: AtomicU64,
    pub elb_5xx: AtomicU64,
    /// Failed connection attempts to targets (each retry counts).
    pub target_connection_errors: AtomicU64,
    /// Requests refused with 503 because the queue was full / the wait timed out.
    pub queue_full: AtomicU64,
    pub queue_timeout: AtomicU64,
    /// How long queued requests waited (served or timed out).
    pub queue_wait: Histogram,
}

/// Connection counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub active_connections: AtomicI64,
    pub connections_total: AtomicU64,
    /// Request and response body bytes (ALB's ProcessedBytes, without headers).
    pub processed_bytes: Counter,
    pub tls_handshake_errors: AtomicU64,
    pub request_duration: Histogram,
    /// Mutual TLS handshakes refused, by [`Failure`] (in `Failure::ALL` order).
    pub mtls_failures: [AtomicU64; Failure::ALL.len()],
    /// Connections closed over their PROXY header, by [`Refused`] (in `Refused::ALL` order).
    pub proxy_protocol_errors: [AtomicU64; Refused::ALL.len()],
}

impl ListenerStats {
    /// Counts one refused client certificate.
    pub fn mtls_failure(&self, f: Failure) {
        // (`Failure::ALL` lists the reasons in declaration order: a unit test checks it.)
        self.mtls_failures[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection closed over its PROXY header.
    pub fn proxy_protocol_error(&self, r: Refused) {
        self.proxy_protocol_errors[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused client certificates, every reason.
    pub fn mtls_failures_total(&self) -> u64 {
        self.mtls_failures.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// A (listener, target group) label pair; the group is "" for answers not forwarded.
pub type ListenerGroup = (Arc<str>, Arc<str>);

/// Every metric of the process, shared by the data and control planes.
#[derive(Debug, Default)]
pub struct Metrics {
    listeners: DashMap<Arc<str>, Arc<ListenerStats>>,
    requests: DashMap<ListenerGroup, Arc<CodeCounters>>,
    target_response: DashMap<Arc<str>, Arc<Histogram>>,
    health_checks: DashMap<(Arc<str>, &'static str), Arc<AtomicU64>>,
    discovery_errors: DashMap<Arc<str>, Arc<AtomicU64>>,
    certificate_refresh_errors: DashMap<Arc<str>, Arc<AtomicU64>>,
    trust_store_refresh_errors: DashMap<Arc<str>, Arc<AtomicU64>>,
    config_source_checks: DashMap<&'static str, Arc<AtomicU64>>,
    groups: DashMap<Arc<str>, Arc<GroupStats>>,
    autoscaling_desired: DashMap<Arc<str>, Arc<AtomicI64>>,
    autoscaling_actions: DashMap<(Arc<str>, &'static str), Arc<AtomicU64>>,
    /// Each autoscaled group's latest decision, described, and when (for the dashboard).
    autoscaling_decisions: DashMap<Arc<str>, (std::time::SystemTime, String)>,
    pub cloudwatch_publish_errors: AtomicU64,
    pub cloudwatch_datums_published: AtomicU64,
    pub reloads_success: AtomicU64,
    pub reloads_failure: AtomicU64,
    pub generation: AtomicU64,
    pub access_log_dropped: AtomicU64,
    jwt: DashMap<Arc<str>, Arc<JwtStats>>,
    jwks: Arc<JwksStats>,
}

/// Key set fetches by URL and result (control plane and, on an unknown key, the data plane).
#[derive(Debug, Default)]
pub struct JwksStats {
    fetches: DashMap<(Arc<str>, bool), AtomicU64>,
}

impl JwksStats {
    /// Counts one fetch of `url`.
    pub fn count(&self, url: &str, ok: bool) {
        self.fetches.entry((url.into(), ok)).or_default().fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The stats of listener `name` (created on first use; kept across reloads).
    pub fn listener(&self, name: &Arc<str>) -> Arc<ListenerStats> {
        self.listeners.entry(name.clone()).or_default().clone()
    }

    /// Client connections open on every listener.
    pub fn open_connections(&self) -> i64 {
        self.listeners.iter().map(|l| l.active_connections.load(Ordering::Relaxed)).sum()
    }

    /// Response counters for `listener` × `target_group` ("" when no group answered).
    pub fn requests(&self, listener: &Arc<str>, target_group: &Arc<str>) -> Arc<CodeCounters> {
        self.requests.entry((listener.clone(), target_group.clone())).or_default().clone()
    }

    /// Target response-time histogram of `target_group`.
    pub fn target_response(&self, target_group: &Arc<str>) -> Arc<Histogram> {
        self.target_response.entry(target_group.clone()).or_default().clone()
    }

    /// Counts one active health check of `target_group` ("pass" or "fail"; control plane).
    pub fn health_check(&self, target_group: &Arc<str>, result: &'static str) {
        self.health_checks.entry((target_group.clone(), result)).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// The extra counters of `target_group`.
    pub fn group(&self, target_group: &Arc<str>) -> Arc<GroupStats> {
        self.groups.entry(target_group.clone()).or_default().clone()
    }

    /// Every listener's stats, by name.
    pub fn listeners(&self) -> Vec<(Arc<str>, Arc<ListenerStats>)> {
        self.listeners.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Every (listener, target group) response counter.
    pub fn request_counters(&self) -> Vec<(ListenerGroup, Arc<CodeCounters>)> {
        self.requests.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Records the autoscaler's latest desired count for `target_group`.
    pub fn autoscaling_desired(&self, target_group: &Arc<str>, desired: i64) {
        self.autoscaling_desired.entry(target_group.clone()).or_default().store(desired, Ordering::Relaxed);
    }

    /// Notes the autoscaler's latest decision for `target_group` (control plane).
    pub fn autoscaling_decision(&self, target_group: &Arc<str>, what: String) {
        self.autoscaling_decisions.insert(target_group.clone(), (std::time::SystemTime::now(), what));
    }

    /// The latest decision for `target_group`, if any.
    pub fn autoscaling_decision_of(&self, target_group: &str) -> Option<(std::time::SystemTime, String)> {
        self.autoscaling_decisions.get(target_group).map(|e| e.value().clone())
    }

    /// Every autoscaled group's latest desired count.
    pub fn autoscaling_all(&self) -> Vec<(Arc<str>, i64)> {
        self.autoscaling_desired.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect()
    }

    /// Counts one scaling action (`out` or `in`) of `target_group`.
    pub fn autoscaling_action(&self, target_group: &Arc<str>, direction: &'static str) {
        self.autoscaling_actions.entry((target_group.clone(), direction)).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed discovery refresh of `target_group` (control plane).
    pub fn discovery_error(&self, target_group: &Arc<str>) {
        self.discovery_errors.entry(target_group.clone()).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed fetch of certificate `name` from AWS (control plane).
    pub fn certificate_refresh_error(&self, name: &str) {
        self.certificate_refresh_errors.entry(name.into()).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed read of a trust store or CRL kept in AWS (`source` as messages name it).
    pub fn trust_store_refresh_error(&self, source: &str) {
        self.trust_store_refresh_errors.entry(source.into()).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one check of the configuration's source by `--poll` (`unchanged`, `changed`,
    /// `error`).
    pub fn config_source_check(&self, result: &'static str) {
        self.config_source_checks.entry(result).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// The token check counters of rule `rule` (kept across reloads).
    pub fn jwt(&self, rule: &str) -> Arc<JwtStats> {
        self.jwt.entry(rule.into()).or_default().clone()
    }

    /// Every rule's token check counters.
    pub fn jwt_all(&self) -> Vec<(Arc<str>, Arc<JwtStats>)> {
        self.jwt.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// The key set fetch counters.
    pub fn jwks_stats(&self) -> Arc<JwksStats> {
        self.jwks.clone()
    }

    /// Renders everything in the Prometheus text format (0.0.4).
    pub fn render(&self, extra: impl FnOnce(&mut String)) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP pilotfish_requests_total Responses sent to clients.\n# TYPE pilotfish_requests_total counter\n",
        );
        let mut rows: Vec<_> = self.requests.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for ((l, tg), c) in &rows {
            for code in 100..600u16 {
                let n = c.get(code);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "pilotfish_requests_total{{listener=\"{}\",target_group=\"{}\",code=\"{code}\"}} {n}",
                        esc(l),
                        esc(tg)
                    );
                }
            }
        }
        let mut ls: Vec<_> = self.listeners.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        ls.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP pilotfish_request_duration_seconds Time from request head to response head.\n# TYPE pilotfish_request_duration_seconds histogram\n");
        for (l, s) in &ls {
            s.request_duration.render(
                &mut out,
                "pilotfish_request_duration_seconds",
                &format!("listener=\"{}\"", esc(l)),
            );
        }
        out.push_str(
            "# HELP pilotfish_active_connections Open client connections.\n# TYPE pilotfish_active_connections gauge\n",
        );
        for (l, s) in &ls {
            let _ = writeln!(
                out,
                "pilotfish_active_connections{{listener=\"{}\"}} {}",
                esc(l),
                s.active_connections.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP pilotfish_connections_total Client connections accepted.\n# TYPE pilotfish_connections_total counter\n");
        for (l, s) in &ls {
            let _ = writeln!(
                out,
                "pilotfish_connections_total{{listener=\"{}\"}} {}",
                esc(l),
                s.connections_total.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP pilotfish_tls_handshake_errors_total Failed or timed-out TLS handshakes.\n# TYPE pilotfish_tls_handshake_errors_total counter\n");
        for (l, s) in &ls {
            let _ = writeln!(
                out,
                "pilotfish_tls_handshake_errors_total{{listener=\"{}\"}} {}",
                esc(l),
                s.tls_handshake_errors.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP pilotfish_mtls_failures_total Client certificates refused in the TLS handshake (mutual TLS), by reason.\n# TYPE pilotfish_mtls_failures_total counter\n");
        for (l, s) in &ls {
            for (f, n) in Failure::ALL.iter().zip(&s.mtls_failures) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "pilotfish_mtls_failures_total{{listener=\"{}\",reason=\"{}\"}} {n}",
                        esc(l),
                        f.as_str()
                    );
                }
            }
        }
        out.push_str("# HELP pilotfish_proxy_protocol_errors_total Connections closed over their PROXY protocol header (missing, malformed, from an untrusted peer...), by reason.\n# TYPE pilotfish_proxy_protocol_errors_total counter\n");
        for (l, s) in &ls {
            for (r, n) in Refused::ALL.iter().zip(&s.proxy_protocol_errors) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "pilotfish_proxy_protocol_errors_total{{listener=\"{}\",reason=\"{}\"}} {n}",
                        esc(l),
                        r.as_str()
                    );
                }
            }
        }
        out.push_str("# HELP pilotfish_jwt_checks_total Token checks of rules with jwt, by result (valid, or why the request got 401).\n# TYPE pilotfish_jwt_checks_total counter\n");
        let mut jw = self.jwt_all();
        jw.sort_by(|a, b| a.0.cmp(&b.0));
        for (rule, s) in &jw {
            let valid = s.valid.load(Ordering::Relaxed);
            let rows = std::iter::once(("valid", valid))
                .chain(Reason::ALL.iter().zip(&s.refused).map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed))));
            for (result, n) in rows.filter(|(r, n)| *n > 0 || *r == "valid") {
                let _ = writeln!(out, "pilotfish_jwt_checks_total{{rule=\"{}\",result=\"{result}\"}} {n}", esc(rule));
            }
        }
        out.push_str("# HELP pilotfish_jwks_fetches_total Reads of JSON Web Key Sets, by result (a failed one keeps the last good keys).\n# TYPE pilotfish_jwks_fetches_total counter\n");
        let mut jf: Vec<_> =
            self.jwks.fetches.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        jf.sort();
        for ((url, ok), n) in jf {
            let result = if ok { "success" } else { "error" };
            let _ = writeln!(out, "pilotfish_jwks_fetches_total{{jwks=\"{}\",result=\"{result}\"}} {n}", esc(&url));
        }
        out.push_str("# HELP pilotfish_target_response_seconds Time from forwarding to the target's response head.\n# TYPE pilotfish_target_response_seconds histogram\n");
        let mut tr: Vec<_> = self.target_response.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        tr.sort_by(|a, b| a.0.cmp(&b.0));
        for (tg, h) in &tr {
            h.render(&mut out, "pilotfish_target_response_seconds", &format!("target_group=\"{}\"", esc(tg)));
        }
        out.push_str("# HELP pilotfish_config_reloads_total Configuration reloads by result.\n# TYPE pilotfish_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "pilotfish_config_reloads_total{{result=\"success\"}} {}",
            self.reloads_success.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "pilotfish_config_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failure.load(Ordering::Relaxed)
        );
        out.push_str("# HELP pilotfish_config_generation Generation of the active configuration.\n# TYPE pilotfish_config_generation gauge\n");
        let _ = writeln!(out, "pilotfish_config_generation {}", self.generation.load(Ordering::Relaxed));
        out.push_str("# HELP pilotfish_access_log_dropped_total Access log lines dropped because the writer fell behind.\n# TYPE pilotfish_access_log_dropped_total counter\n");
        let _ = writeln!(out, "pilotfish_access_log_dropped_total {}", self.access_log_dropped.load(Ordering::Relaxed));
        out.push_str("# HELP pilotfish_health_checks_total Active health checks by result.\n# TYPE pilotfish_health_checks_total counter\n");
        let mut hc: Vec<_> =
            self.health_checks.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        hc.sort();
        for ((tg, result), n) in hc {
            let _ =
                writeln!(out, "pilotfish_health_checks_total{{target_group=\"{}\",result=\"{result}\"}} {n}", esc(&tg));
        }
        out.push_str("# HELP pilotfish_discovery_errors_total Failed discovery refreshes (the last known targets keep serving).\n# TYPE pilotfish_discovery_errors_total counter\n");
        let mut de: Vec<_> =
            self.discovery_errors.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        de.sort();
        for (tg, n) in de {
            let _ = writeln!(out, "pilotfish_discovery_errors_total{{target_group=\"{}\"}} {n}", esc(&tg));
        }
        out.push_str("# HELP pilotfish_trust_store_refresh_errors_total Failed reads of a trust store or CRL kept in AWS (the copy in force keeps verifying).\n# TYPE pilotfish_trust_store_refresh_errors_total counter\n");
        let mut te: Vec<_> = self
            .trust_store_refresh_errors
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        te.sort();
        for (src, n) in te {
            let _ = writeln!(out, "pilotfish_trust_store_refresh_errors_total{{source=\"{}\"}} {n}", esc(&src));
        }
        out.push_str("# HELP pilotfish_certificate_refresh_errors_total Failed reads of a certificate from AWS (the last good one keeps serving).\n# TYPE pilotfish_certificate_refresh_errors_total counter\n");
        let mut ce: Vec<_> = self
            .certificate_refresh_errors
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        ce.sort();
        for (c, n) in ce {
            let _ = writeln!(out, "pilotfish_certificate_refresh_errors_total{{certificate=\"{}\"}} {n}", esc(&c));
        }
        out.push_str("# HELP pilotfish_config_source_checks_total Checks of the configuration's source by --poll.\n# TYPE pilotfish_config_source_checks_total counter\n");
        let mut cs: Vec<_> =
            self.config_source_checks.iter().map(|e| (*e.key(), e.value().load(Ordering::Relaxed))).collect();
        cs.sort();
        for (r, n) in cs {
            let _ = writeln!(out, "pilotfish_config_source_checks_total{{result=\"{r}\"}} {n}");
        }
        out.push_str("# HELP pilotfish_autoscaling_desired The autoscaler's latest desired task count.\n# TYPE pilotfish_autoscaling_desired gauge\n");
        let mut ad: Vec<_> =
            self.autoscaling_desired.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        ad.sort();
        for (tg, n) in ad {
            let _ = writeln!(out, "pilotfish_autoscaling_desired{{target_group=\"{}\"}} {n}", esc(&tg));
        }
        out.push_str("# HELP pilotfish_autoscaling_actions_total ECS UpdateService calls made by the autoscaler.\n# TYPE pilotfish_autoscaling_actions_total counter\n");
        let mut aa: Vec<_> =
            self.autoscaling_actions.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        aa.sort();
        for ((tg, dir), n) in aa {
            let _ = writeln!(
                out,
                "pilotfish_autoscaling_actions_total{{target_group=\"{}\",direction=\"{dir}\"}} {n}",
                esc(&tg)
            );
        }
        out.push_str("# HELP pilotfish_cloudwatch_publish_errors_total Failed PutMetricData calls (retried with the next batch).\n# TYPE pilotfish_cloudwatch_publish_errors_total counter\n");
        let _ = writeln!(
            out,
            "pilotfish_cloudwatch_publish_errors_total {}",
            self.cloudwatch_publish_errors.load(Ordering::Relaxed)
        );
        out.push_str("# HELP pilotfish_cloudwatch_datums_published_total Metric datums accepted by CloudWatch.\n# TYPE pilotfish_cloudwatch_datums_published_total counter\n");
        let _ = writeln!(
            out,
            "pilotfish_cloudwatch_datums_published_total {}",
            self.cloudwatch_datums_published.load(Ordering::Relaxed)
        );
        extra(&mut out);
        out
    }
}

/// Escapes a Prometheus label value.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        let l: Arc<str> = "web".into();
        m.requests(&l, &"api".into()).inc(200);
        m.requests(&l, &"api".into()).inc(200);
        m.listener(&l).request_duration.observe(Duration::from_millis(3));
        let text = m.render(|_| {});
        assert!(text.contains("pilotfish_requests_total{listener=\"web\",target_group=\"api\",code=\"200\"} 2"));
        assert!(text.contains("pilotfish_request_duration_seconds_bucket{listener=\"web\",le=\"0.005\"} 1"));
        assert!(text.contains("pilotfish_request_duration_seconds_count{listener=\"web\"} 1"));
    }

    #[test]
    fn sharded_histograms_and_counters_sum_over_the_workers() {
        let h = Arc::new(Histogram::default());
        let c = Arc::new(CodeCounters::default());
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (h, c) = (h.clone(), c.clone());
                std::thread::spawn(move || {
                    crate::shard::enter_worker(w);
                    for _ in 0..100 {
                        h.observe(Duration::from_millis(3));
                        c.inc(200);
                    }
                    h.observe(Duration::from_secs(60)); // beyond the last bound: +Inf
                })
            })
            .collect();
        workers.into_iter().for_each(|t| t.join().unwrap());
        let (b, count, sum) = h.snapshot();
        assert_eq!(count, 404);
        assert_eq!(b[2], 400, "the 5 ms bucket: {b:?}");
        assert_eq!(b[BUCKETS.len()], 4, "+Inf: {b:?}");
        assert_eq!(sum, 400 * 3_000 + 4 * 60_000_000);
        assert_eq!((c.get(200), c.total()), (400, 400));
        let mut out = String::new();
        h.render(&mut out, "x", "l=\"a\"");
        assert!(
            out.contains("x_bucket{l=\"a\",le=\"30\"} 400\n") && out.contains("x_bucket{l=\"a\",le=\"+Inf\"} 404\n"),
            "{out}"
        );
    }
}
