//! Service discovery on the control thread: one loop per discovered target group, asking AWS
//! Cloud Map ([`cloud_map`]) or ECS ([`ecs`]) every `refresh`, or DNS ([`dns`]) when the
//! answer's TTL runs out (within `refresh`), and applying the answer as a diff
//! through [`TargetGroup::update`](crate::balance::TargetGroup::update) (unchanged targets keep
//! their state; removed ones drain; an identical answer publishes nothing).
//!
//! Faults never empty a group: an API error, throttling, timeout or NXDOMAIN keeps the last known targets,
//! is counted (`pilotfish_discovery_errors_total`), logged once per failure streak with the AWS
//! operation and error code, and retried with capped exponential backoff and jitter. The
//! supervisor follows reloads: loops start, stop or restart when a group's source changes.

pub mod cloud_map;
pub mod dns;
pub mod ecs;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::balance::TargetSpec;
use crate::config::snapshot::{AwsSettings, DiscoverySpec};
use crate::control::aws::{sdk_config, AwsError};
use crate::state::{DiscoveryStatus, SharedState};

/// A source of targets.
enum Source {
    CloudMap(cloud_map::CloudMap),
    Ecs(ecs::Ecs),
    Dns(Box<dns::Dns>),
}

impl Source {
    /// The targets now, and when to ask again.
    async fn fetch(&self, refresh: Duration) -> Result<(Vec<TargetSpec>, Duration), AwsError> {
        match self {
            Source::CloudMap(c) => Ok((c.fetch().await?, refresh)),
            Source::Ecs(e) => Ok((e.fetch().await?, refresh)),
            Source::Dns(d) => d.fetch().await.map(|f| (f.targets, dns::next_lookup(f.ttl, refresh))),
        }
    }

    /// The source `spec` names (AWS clients from `aws`; DNS needs none).
    async fn new(spec: &DiscoverySpec, aws: &AwsSettings) -> Result<Source, AwsError> {
        Ok(match spec {
            DiscoverySpec::Dns { name, kind, port, resolver, .. } => {
                Source::Dns(Box::new(dns::Dns::new(name, *kind, *port, *resolver)?))
            }
            DiscoverySpec::CloudMap { namespace, service, health_status, port, .. } => {
                Source::CloudMap(cloud_map::CloudMap::new(
                    &sdk_config(aws).await,
                    aws.endpoint_url.is_some(),
                    namespace.clone(),
                    service.clone(),
                    health_status.clone(),
                    *port,
                ))
            }
            DiscoverySpec::Ecs { cluster, service, container_name, container_port, .. } => Source::Ecs(ecs::Ecs::new(
                &sdk_config(aws).await,
                cluster.clone(),
                service.clone(),
                container_name.clone(),
                *container_port,
            )),
        })
    }
}

/// Starts, stops and restarts discovery loops as snapshots change. Runs until the control
/// runtime stops.
pub async fn supervise(state: Arc<SharedState>) {
    let mut generation = state.generation_watch();
    let mut running: HashMap<Arc<str>, (DiscoverySpec, AwsSettings, JoinHandle<()>)> = HashMap::new();
    loop {
        let snap = state.load();
        running.retain(|name, (spec, aws, task)| {
            let keep = snap.discovery_of(name) == Some(spec) && &snap.aws == aws;
            if !keep {
                task.abort();
                state.discovery.remove(name);
            }
            keep
        });
        for (name, spec) in &snap.discovery {
            if !running.contains_key(name) {
                let task = tokio::spawn(run(state.clone(), name.clone(), spec.clone(), snap.aws.clone()));
                running.insert(name.clone(), (spec.clone(), snap.aws.clone(), task));
            }
        }
        if generation.changed().await.is_err() {
            return;
        }
    }
}

/// Backoff after `failures` consecutive errors: doubling from `refresh`, capped, full jitter in
/// the upper half so replicas do not retry in lockstep.
pub fn backoff(refresh: Duration, failures: u32) -> Duration {
    let cap = (refresh * 16).clamp(Duration::from_secs(5), Duration::from_secs(300));
    let d = refresh.saturating_mul(1 << failures.min(16)).min(cap);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

async fn run(state: Arc<SharedState>, group: Arc<str>, spec: DiscoverySpec, aws: AwsSettings) {
    state.discovery.insert(group.clone(), DiscoveryStatus::default());
    let refresh = spec.refresh();
    let source = match Source::new(&spec, &aws).await {
        Ok(s) => s,
        Err(e) => {
            // Nothing to ask: the group keeps what it has until a reload changes the source.
            state.metrics.discovery_error(&group);
            tracing::error!(target_group = %group, operation = e.operation, code = %e.code, error = %e.message,
                "discovery cannot start; the group keeps its targets");
            if let Some(mut s) = state.discovery.get_mut(&group) {
                s.last_error = Some(e.to_string());
            }
            return;
        }
    };
    let mut failures = 0u32;
    // The interval backoff starts from: the last answer's (a DNS TTL can make it much shorter
    // than refresh), before any answer at most 5 s.
    let mut pace = refresh.min(Duration::from_secs(5));
    loop {
        match source.fetch(refresh).await {
            Ok((specs, next)) => {
                pace = next;
                if failures > 0 {
                    tracing::info!(target_group = %group, after = failures, "discovery recovered");
                }
                failures = 0;
                // The group of the snapshot published now (reloads replace group objects).
                if let Some(g) = state.load().target_group(&group) {
                    if g.update(&specs) {
                        tracing::info!(target_group = %group, source = spec.source(), targets = specs.len(), "discovered targets changed");
                    }
                }
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                state
                    .discovery
                    .insert(group.clone(), DiscoveryStatus { last_refresh_unix_ms: Some(now), last_error: None });
                tokio::time::sleep(next).await;
            }
            Err(e) => {
                state.metrics.discovery_error(&group);
                if failures == 0 {
                    tracing::warn!(target_group = %group, operation = e.operation, code = %e.code, error = %e.message,
                        "discovery failed; keeping the last known targets and backing off");
                }
                failures += 1;
                if let Some(mut s) = state.discovery.get_mut(&group) {
                    s.last_error = Some(e.to_string());
                }
                tokio::time::sleep(backoff(pace, failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let r = Duration::from_secs(1);
        for f in 1..30 {
            let d = backoff(r, f);
            let full = (r * (1 << f.min(16))).min(Duration::from_secs(16));
            assert!(d >= full / 2 && d <= full, "{f}: {d:?} vs {full:?}");
        }
        assert!(backoff(Duration::from_millis(200), 40) <= Duration::from_secs(5));
    }
}
