//! The CloudWatch publisher: every `interval`, ALB's metrics under ALB's names and units, with
//! dimensions `LoadBalancer` and `LoadBalancer,TargetGroup`, so existing ALB dashboards and
//! Copilot-style scaling policies work unchanged. Counters are read from the data plane's
//! atomics (no locks) and published as deltas; `TargetResponseTime` goes as value/count arrays
//! from the latency histogram so CloudWatch can compute percentiles. A failed `PutMetricData` is
//! counted and its datums are sent again with the next batch (bounded), never blocking anything.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::config::snapshot::{AwsSettings, CloudWatchSettings, Snapshot};
use crate::control::aws::{sdk_config, AwsError};
use crate::state::SharedState;
use crate::telemetry::metrics::BUCKETS;

/// PutMetricData takes at most 1 000 datums per call; stay well inside the payload limit too.
const BATCH: usize = 500;
/// Datums kept for retry while CloudWatch is unreachable (oldest dropped first).
const MAX_PENDING: usize = 20_000;

/// Cumulative counters at one instant, under ALB's metric names (also what the dashboard's
/// history is computed from, [`super::stats`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Totals {
    pub lb: HashMap<&'static str, u64>,
    pub groups: HashMap<Arc<str>, HashMap<&'static str, u64>>,
    /// Per group: latency histogram buckets (cumulative counts per bucket, not running sums).
    pub latency: HashMap<Arc<str>, [u64; BUCKETS.len() + 1]>,
}

const TARGET_CODES: [&str; 4] = [
    "HTTPCode_Target_2XX_Count",
    "HTTPCode_Target_3XX_Count",
    "HTTPCode_Target_4XX_Count",
    "HTTPCode_Target_5XX_Count",
];

/// Reads every counter the workers keep, summed over their shards.
pub(crate) fn totals(state: &SharedState) -> Totals {
    let m = &state.metrics;
    let mut t = Totals::default();
    // Responses by class (2xx..5xx) per group, over every listener.
    let mut classes: HashMap<Arc<str>, [u64; 4]> = HashMap::new();
    for ((_, tg), codes) in m.request_counters() {
        *t.lb.entry("RequestCount").or_default() += codes.total();
        if tg.is_empty() {
            // Answers before any rule (malformed, slow or oversized heads) come from the balancer.
            let elb4: u64 = [400, 401, 408, 413, 414, 431].iter().map(|&c| codes.get(c)).sum();
            *t.lb.entry("HTTPCode_ELB_4XX_Count").or_default() += elb4;
            continue;
        }
        *t.groups.entry(tg.clone()).or_default().entry("RequestCount").or_default() += codes.total();
        let c = classes.entry(tg).or_default();
        for (i, class) in c.iter_mut().enumerate() {
            let base = (i as u16 + 2) * 100;
            *class += (base..base + 100).map(|s| codes.get(s)).sum::<u64>();
        }
    }
    for (tg, c) in classes {
        let stats = m.group(&tg);
        let e4 = stats.elb_4xx.load(Ordering::Relaxed);
        let e5 = stats.elb_5xx.load(Ordering::Relaxed);
        let conn = stats.target_connection_errors.load(Ordering::Relaxed);
        // The balancer's own 4xx/5xx answers are counted under the group too: take them out.
        let target = [c[0], c[1], c[2].saturating_sub(e4), c[3].saturating_sub(e5)];
        let g = t.groups.entry(tg.clone()).or_default();
        g.insert("HTTPCode_ELB_4XX_Count", e4);
        g.insert("HTTPCode_ELB_5XX_Count", e5);
        g.insert("TargetConnectionErrorCount", conn);
        for (k, v) in TARGET_CODES.iter().zip(target) {
            g.insert(k, v);
            *t.lb.entry(k).or_default() += v;
        }
        *t.lb.entry("HTTPCode_ELB_4XX_Count").or_default() += e4;
        *t.lb.entry("HTTPCode_ELB_5XX_Count").or_default() += e5;
        *t.lb.entry("TargetConnectionErrorCount").or_default() += conn;
        t.latency.insert(tg.clone(), m.target_response(&tg).snapshot().0);
    }
    for (_, l) in m.listeners() {
        *t.lb.entry("NewConnectionCount").or_default() += l.connections_total.load(Ordering::Relaxed);
        *t.lb.entry("ProcessedBytes").or_default() += l.processed_bytes.get();
        *t.lb.entry("ClientTLSNegotiationErrorCount").or_default() += l.tls_handshake_errors.load(Ordering::Relaxed);
        *t.lb.entry("MutualTLSFailureCount").or_default() += l.mtls_failures_total();
    }
    let jwt_refused: u64 = m.jwt_all().iter().map(|(_, s)| s.refused_total()).sum();
    t.lb.insert("JWTValidationFailureCount", jwt_refused);
    t
}

fn dims(lb: &str, tg: Option<&str>) -> Vec<Dimension> {
    let mut d = vec![Dimension::builder().name("LoadBalancer").value(lb).build()];
    if let Some(tg) = tg {
        d.push(Dimension::builder().name("TargetGroup").value(tg).build());
    }
    d
}

fn datum(name: &str, unit: StandardUnit, value: f64, dims: Vec<Dimension>, at: DateTime) -> MetricDatum {
    MetricDatum::builder().metric_name(name).unit(unit).value(value).set_dimensions(Some(dims)).timestamp(at).build()
}

/// The datums for the interval between `prev` and `now`.
fn datums(
    cw: &CloudWatchSettings,
    snap: &Snapshot,
    state: &SharedState,
    prev: &Totals,
    now: &Totals,
) -> Vec<MetricDatum> {
    let at = DateTime::from(SystemTime::now());
    let lb = cw.load_balancer.as_str();
    let unit = |k: &str| if k == "ProcessedBytes" { StandardUnit::Bytes } else { StandardUnit::Count };
    let mut out = Vec::new();
    for (k, v) in &now.lb {
        let d = v.saturating_sub(prev.lb.get(k).copied().unwrap_or(0));
        out.push(datum(k, unit(k), d as f64, dims(lb, None), at));
    }
    let active: i64 = state.metrics.listeners().iter().map(|(_, l)| l.active_connections.load(Ordering::Relaxed)).sum();
    out.push(datum("ActiveConnectionCount", StandardUnit::Count, active.max(0) as f64, dims(lb, None), at));
    let (mut healthy_all, mut unhealthy_all) = (0usize, 0usize);
    for g in snap.target_groups() {
        let name: &str = &g.name;
        let set = g.targets();
        let healthy = set.targets().iter().filter(|t| t.is_routable()).count();
        let unhealthy = set.targets().iter().filter(|t| t.state() == crate::balance::TargetState::Unhealthy).count();
        healthy_all += healthy;
        unhealthy_all += unhealthy;
        out.push(datum("HealthyHostCount", StandardUnit::Count, healthy as f64, dims(lb, Some(name)), at));
        out.push(datum("UnHealthyHostCount", StandardUnit::Count, unhealthy as f64, dims(lb, Some(name)), at));
        let empty = HashMap::new();
        let (cur, old) = (now.groups.get(&g.name).unwrap_or(&empty), prev.groups.get(&g.name).unwrap_or(&empty));
        let delta = |k: &str| cur.get(k).copied().unwrap_or(0).saturating_sub(old.get(k).copied().unwrap_or(0));
        let kinds = ["RequestCount", "HTTPCode_ELB_4XX_Count", "HTTPCode_ELB_5XX_Count", "TargetConnectionErrorCount"];
        for k in kinds.into_iter().chain(TARGET_CODES) {
            out.push(datum(k, StandardUnit::Count, delta(k) as f64, dims(lb, Some(name)), at));
        }
        let requests = delta("RequestCount") as f64;
        if !set.targets().is_empty() {
            // ALB divides by the healthy targets (all registered ones when none is healthy).
            let n = if healthy > 0 { healthy } else { set.targets().len() };
            out.push(datum(
                "RequestCountPerTarget",
                StandardUnit::Count,
                requests / n as f64,
                dims(lb, Some(name)),
                at,
            ));
        }
        if let Some(cur) = now.latency.get(&g.name) {
            let zero = [0u64; BUCKETS.len() + 1];
            let old = prev.latency.get(&g.name).unwrap_or(&zero);
            let (mut values, mut counts) = (Vec::new(), Vec::new());
            for i in 0..cur.len() {
                let n = cur[i].saturating_sub(old[i]);
                if n > 0 {
                    // The bucket's upper bound (60 s for the overflow bucket): percentiles are
                    // accurate to a bucket, which is what the histogram knows.
                    values.push(BUCKETS.get(i).copied().unwrap_or(60.0));
                    counts.push(n as f64);
                }
            }
            if !values.is_empty() {
                out.push(
                    MetricDatum::builder()
                        .metric_name("TargetResponseTime")
                        .unit(StandardUnit::Seconds)
                        .set_values(Some(values))
                        .set_counts(Some(counts))
                        .set_dimensions(Some(dims(lb, Some(name))))
                        .timestamp(at)
                        .build(),
                );
            }
        }
    }
    out.push(datum("HealthyHostCount", StandardUnit::Count, healthy_all as f64, dims(lb, None), at));
    out.push(datum("UnHealthyHostCount", StandardUnit::Count, unhealthy_all as f64, dims(lb, None), at));
    out
}

/// Publishes until the control runtime stops; follows reloads of `[cloudwatch]` and `[aws]`.
pub async fn run(state: Arc<SharedState>) {
    let mut generation = state.generation_watch();
    let mut client: Option<(AwsSettings, aws_sdk_cloudwatch::Client)> = None;
    let mut prev = totals(&state);
    let mut pending: Vec<MetricDatum> = Vec::new();
    loop {
        let snap = state.load();
        let Some(cw) = snap.cloudwatch.clone() else {
            if generation.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::time::sleep(cw.interval).await;
        let snap = state.load();
        if client.as_ref().is_none_or(|(a, _)| a != &snap.aws) {
            let sdk = sdk_config(&snap.aws).await;
            client = Some((snap.aws.clone(), aws_sdk_cloudwatch::Client::new(&sdk)));
        }
        let Some((_, cwc)) = &client else { continue };
        let now = totals(&state);
        pending.extend(datums(&cw, &snap, &state, &prev, &now));
        prev = now;
        if pending.len() > MAX_PENDING {
            let drop = pending.len() - MAX_PENDING;
            pending.drain(..drop);
        }
        while !pending.is_empty() {
            let n = pending.len().min(BATCH);
            let batch: Vec<MetricDatum> = pending[..n].to_vec();
            match cwc.put_metric_data().namespace(&cw.namespace).set_metric_data(Some(batch)).send().await {
                Ok(_) => {
                    pending.drain(..n);
                    state.metrics.cloudwatch_datums_published.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let e = AwsError::sdk("PutMetricData", e);
                    state.metrics.cloudwatch_publish_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(code = %e.code, error = %e.message, pending = pending.len(), "CloudWatch publish failed; retrying with the next batch");
                    break;
                }
            }
        }
    }
}
