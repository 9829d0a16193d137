//! Active health checks and target housekeeping, on the control thread.
//!
//! One scheduler loop ticks every 20 ms over the current snapshot's groups: it starts the checks
//! that are due (each on its own task, bounded by the check timeout), drops draining targets that
//! are idle or past `deregistration_delay`, and logs fail-open transitions. Check times are
//! jittered (first check spread over up to a second, then ±10% of the interval) so a thousand
//! targets are not probed in the same millisecond. Checks use the group's traffic protocol
//! (HTTP/1.1 or h2c) on a fresh connection, like ALB's.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioExecutor;

use crate::balance::target::now_ms;
use crate::balance::{CheckResult, HealthCheck, Reason, Target, TargetGroup, TargetState};
use crate::config::snapshot::{Transport, Upstream, UpstreamProtocol};
use crate::state::SharedState;
use crate::tls::client;

const TICK: Duration = Duration::from_millis(20);

/// Runs until the control runtime stops.
pub async fn run(state: Arc<SharedState>) {
    let mut fail_open: HashSet<Arc<str>> = HashSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snap = state.load();
        let now = now_ms();
        for Upstream { group: g, transport, .. } in &snap.upstreams {
            for addr in g.sweep_draining() {
                tracing::info!(target_group = %g.name, target = %addr, "deregistered target drained and removed");
            }
            let fo = g.is_fail_open();
            if fo && fail_open.insert(g.name.clone()) {
                tracing::warn!(target_group = %g.name, "no healthy target: failing open, routing to all unhealthy targets");
            } else if !fo && fail_open.remove(&g.name) {
                tracing::info!(target_group = %g.name, "healthy targets are back: fail-open ended");
            }
            let Some(hc) = &g.settings.health_check else { continue };
            let interval = hc.interval.as_millis() as u64;
            for t in g.targets().targets() {
                if matches!(t.state(), TargetState::Draining | TargetState::Unused) {
                    continue;
                }
                let next = t.next_check.load(Ordering::Relaxed);
                if next == 0 {
                    t.next_check.store(now + fastrand::u64(0..=interval.min(1000)), Ordering::Relaxed);
                    continue;
                }
                if next > now {
                    continue;
                }
                let jitter = interval / 10;
                t.next_check.store(now + interval - jitter + fastrand::u64(0..=2 * jitter), Ordering::Relaxed);
                tokio::spawn(check_one(state.clone(), g.clone(), transport.clone(), t.clone(), hc.clone()));
            }
        }
    }
}

async fn check_one(
    state: Arc<SharedState>,
    group: Arc<TargetGroup>,
    transport: Arc<Transport>,
    target: Arc<Target>,
    hc: HealthCheck,
) {
    let addr = SocketAddr::new(target.addr.ip(), hc.port.unwrap_or(target.addr.port()));
    let result = match tokio::time::timeout(hc.timeout, probe(addr, &hc.path, &transport)).await {
        Err(_) => CheckResult::Fail(Reason::Timeout),
        Ok(Err(reason)) => CheckResult::Fail(reason),
        Ok(Ok(status)) if hc.matches(status) => CheckResult::Pass,
        Ok(Ok(_)) => CheckResult::Fail(Reason::ResponseCodeMismatch),
    };
    state.metrics.health_check(&group.name, if result == CheckResult::Pass { "pass" } else { "fail" });
    if let Some(new) = target.record_check(result, hc.healthy_threshold, hc.unhealthy_threshold) {
        match new {
            TargetState::Healthy => {
                tracing::info!(target_group = %group.name, target = %target.addr, "target is healthy")
            }
            _ => tracing::warn!(
                target_group = %group.name, target = %target.addr, state = new.as_str(), reason = target.reason().as_str(),
                "target failed its health checks"
            ),
        }
    }
}

/// One check: GET `path` on a new connection (TLS when the group uses it; a PROXY header with
/// no client, `LOCAL`, when it sends them); returns the status.
async fn probe(addr: SocketAddr, path: &str, transport: &Transport) -> Result<u16, Reason> {
    let preface = transport.proxy_protocol.map(|v| crate::proxy::proxy_protocol::encode(v, None));
    let io = client::dial(addr, transport.tls.as_deref(), transport.connect_timeout, preface.as_deref())
        .await
        .map(hyper_util::rt::TokioIo::new)
        .map_err(|_| Reason::ConnectionFailed)?;
    let host = addr.to_string();
    let scheme = if transport.tls.is_some() { "https" } else { "http" };
    let req = |uri: String| {
        Request::get(uri)
            .header(header::USER_AGENT, concat!("pilotfish-health-check/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|_| Reason::FailedHealthChecks)
    };
    let status = match transport.protocol {
        UpstreamProtocol::Http1 => {
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(io).await.map_err(|_| Reason::ConnectionFailed)?;
            tokio::spawn(conn);
            let mut r = req(path.to_string())?;
            r.headers_mut().insert(header::HOST, host.parse().map_err(|_| Reason::FailedHealthChecks)?);
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            tx.send_request(r).await.map_err(|_| Reason::FailedHealthChecks)?.status()
        }
        UpstreamProtocol::Http2 => {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Reason::ConnectionFailed)?;
            tokio::spawn(conn);
            tx.send_request(req(format!("{scheme}://{host}{path}"))?)
                .await
                .map_err(|_| Reason::FailedHealthChecks)?
                .status()
        }
    };
    Ok(status.as_u16())
}
