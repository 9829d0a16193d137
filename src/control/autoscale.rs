//! Target tracking on the ECS service behind a target group.
//!
//! Every `period`: read the current desired count (ECS `DescribeServices`) and the metric
//! (CloudWatch `GetMetricData` over the metrics every replica publishes, or this process's
//! counters), then [`decide`]: `desired = ceil(current × metric / target)`, clamped to
//! `[min, max]`, at most halving per step, with separate scale-out and scale-in cooldowns
//! (scale-out wins), and no change at all on missing data. `UpdateService` is called only when
//! the count changes; it is idempotent, so replicas that compute the same answer from the same
//! CloudWatch data agree. Every decision is logged with its inputs and exported.
//!
//! `mode = "application-autoscaling"` instead registers the service with AWS Application Auto
//! Scaling (a scalable target and a target-tracking policy on the published metric) and lets AWS
//! scale it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};

use crate::config::snapshot::{AutoscalingSpec, CloudWatchSettings};
use crate::config::snapshot::{MetricSource, ScalingMetric, ScalingMode};
use crate::control::aws::{sdk_config, AwsError};
use crate::state::SharedState;

/// The policy part of a decision's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    pub target: f64,
    pub scale_out_cooldown: Duration,
    pub scale_in_cooldown: Duration,
}

/// When the autoscaler last acted.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    pub last_scale_out: Option<Instant>,
    pub last_scale_in: Option<Instant>,
}

/// What to do this period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep the current count, and why.
    Hold(&'static str),
    /// Set the desired count.
    Scale(u32),
}

/// The target-tracking decision. Pure: same inputs, same answer.
pub fn decide(p: &Policy, current: u32, metric: Option<f64>, h: &History, now: Instant) -> Decision {
    let within = |t: Option<Instant>, d: Duration| t.is_some_and(|t| now.saturating_duration_since(t) < d);
    let Some(metric) = metric.filter(|m| m.is_finite() && *m >= 0.0) else {
        // Never scale in on missing data; only lift a service below its minimum.
        return if current < p.min { Decision::Scale(p.min) } else { Decision::Hold("metric missing") };
    };
    let raw = if current == 0 {
        // No task to divide the load by: one task per unit of "target" is all we can say.
        if metric > 0.0 {
            1
        } else {
            0
        }
    } else {
        // A hair below the ceiling so 2.0000000001 (float noise) does not become 3.
        let x = f64::from(current) * metric / p.target;
        (x - 1e-9).ceil().max(0.0).min(f64::from(u32::MAX)) as u32
    };
    let mut desired = raw.clamp(p.min, p.max);
    if desired > current {
        if within(h.last_scale_out, p.scale_out_cooldown) {
            return Decision::Hold("scale-out cooldown");
        }
        return Decision::Scale(desired);
    }
    if desired < current {
        // At most halve per step; a burst of quiet does not collapse the service.
        desired = desired.max(current.div_ceil(2)).max(p.min);
        if within(h.last_scale_in, p.scale_in_cooldown) || within(h.last_scale_out, p.scale_in_cooldown) {
            return Decision::Hold("scale-in cooldown");
        }
        if desired < current {
            return Decision::Scale(desired);
        }
    }
    Decision::Hold("at target")
}

/// Starts, stops and restarts autoscaling loops as snapshots change.
pub async fn supervise(state: Arc<SharedState>) {
    let mut generation = state.generation_watch();
    let mut running: std::collections::HashMap<
        Arc<str>,
        (AutoscalingSpec, Option<CloudWatchSettings>, tokio::task::JoinHandle<()>),
    > = std::collections::HashMap::new();
    loop {
        let snap = state.load();
        running.retain(|name, (spec, cw, task)| {
            let now = snap.autoscaling.iter().find(|(g, _)| g == name).map(|(_, s)| s);
            // Unchanged policies keep their loop (and a finished one-shot registration stays done).
            let keep = now == Some(spec) && &snap.cloudwatch == cw;
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, spec) in &snap.autoscaling {
            if !running.contains_key(name) {
                let task = tokio::spawn(run(state.clone(), name.clone(), spec.clone(), snap.cloudwatch.clone()));
                running.insert(name.clone(), (spec.clone(), snap.cloudwatch.clone(), task));
            }
        }
        if generation.changed().await.is_err() {
            return;
        }
    }
}

/// Cumulative counters of one target group, for the local metric source.
struct LocalSample {
    requests: u64,
    rt_count: u64,
    rt_sum_micros: u64,
}

fn local_sample(state: &SharedState, group: &Arc<str>) -> LocalSample {
    let requests =
        state.metrics.request_counters().iter().filter(|((_, tg), _)| tg == group).map(|(_, c)| c.total()).sum();
    let (_, rt_count, rt_sum_micros) = state.metrics.target_response(group).snapshot();
    LocalSample { requests, rt_count, rt_sum_micros }
}

/// Runs one autoscaled group's loop until aborted (by the supervisor on reload).
pub async fn run(state: Arc<SharedState>, group: Arc<str>, spec: AutoscalingSpec, cw: Option<CloudWatchSettings>) {
    let aws = state.load().aws.clone();
    let sdk = sdk_config(&aws).await;
    if spec.mode == ScalingMode::ApplicationAutoscaling {
        let Some(cw) = cw else { return };
        register_with_application_autoscaling(&state, &group, &spec, &cw, &sdk).await;
        return;
    }
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    let policy = Policy {
        min: spec.min,
        max: spec.max,
        target: spec.target,
        scale_out_cooldown: spec.scale_out_cooldown,
        scale_in_cooldown: spec.scale_in_cooldown,
    };
    let mut history = History::default();
    let mut prev = local_sample(&state, &group);
    let mut prev_at = Instant::now();
    loop {
        tokio::time::sleep(spec.period).await;
        let now_sample = local_sample(&state, &group);
        let elapsed = prev_at.elapsed();
        prev_at = Instant::now();
        let local = local_metric(&state, &group, &spec, &prev, &now_sample, elapsed);
        prev = now_sample;
        let current = match describe(&ecs, &spec).await {
            Ok(c) => c,
            Err(e) => {
                state.metrics.autoscaling_action(&group, "error");
                tracing::warn!(target_group = %group, operation = e.operation, code = %e.code, error = %e.message, "autoscaling: cannot read the service; no change");
                continue;
            }
        };
        let metric = match spec.source {
            MetricSource::Local => local,
            MetricSource::Cloudwatch => match cloudwatch_metric(&cloudwatch, &group, &spec, cw.as_ref()).await {
                Ok(m) => m,
                Err(e) => {
                    state.metrics.autoscaling_action(&group, "error");
                    tracing::warn!(target_group = %group, operation = e.operation, code = %e.code, error = %e.message, "autoscaling: cannot read the metric; no change");
                    None
                }
            },
        };
        let decision = decide(&policy, current, metric, &history, Instant::now());
        let desired = match decision {
            Decision::Scale(n) => n,
            Decision::Hold(_) => {
                state.metrics.autoscaling_action(&group, "hold");
                current
            }
        };
        state.metrics.autoscaling_desired(&group, i64::from(desired));
        let shown = metric.map_or("no metric".to_string(), |m| format!("{m:.3}"));
        state.metrics.autoscaling_decision(
            &group,
            match decision {
                Decision::Scale(n) => {
                    format!("scale {current} -> {n} ({:?} {shown}, target {})", spec.metric, spec.target)
                }
                Decision::Hold(why) => {
                    format!("hold at {current} ({why}; {:?} {shown}, target {})", spec.metric, spec.target)
                }
            },
        );
        tracing::info!(
            target_group = %group, service = %spec.ecs.service, current, metric = ?metric, target = spec.target,
            min = spec.min, max = spec.max, decision = ?decision, "autoscaling decision"
        );
        if let Decision::Scale(n) = decision {
            match ecs
                .update_service()
                .cluster(&spec.ecs.cluster)
                .service(&spec.ecs.service)
                .desired_count(n as i32)
                .send()
                .await
            {
                Ok(_) => {
                    let direction = if n > current { "out" } else { "in" };
                    if n > current {
                        history.last_scale_out = Some(Instant::now());
                    } else {
                        history.last_scale_in = Some(Instant::now());
                    }
                    state.metrics.autoscaling_action(&group, direction);
                    tracing::info!(target_group = %group, service = %spec.ecs.service, from = current, to = n, "scaled the ECS service");
                }
                Err(e) => {
                    let e = AwsError::sdk("UpdateService", e);
                    state.metrics.autoscaling_action(&group, "error");
                    tracing::warn!(target_group = %group, code = %e.code, error = %e.message, "autoscaling: UpdateService failed");
                }
            }
        }
    }
}

/// The metric from this process's counters over the last period.
fn local_metric(
    state: &SharedState,
    group: &Arc<str>,
    spec: &AutoscalingSpec,
    prev: &LocalSample,
    now: &LocalSample,
    elapsed: Duration,
) -> Option<f64> {
    match spec.metric {
        ScalingMetric::RequestCountPerTarget => {
            let healthy = state
                .load()
                .target_group(group)
                .map_or(0, |g| g.targets().targets().iter().filter(|t| t.is_routable()).count());
            let requests = now.requests.saturating_sub(prev.requests) as f64;
            // Per target, per minute (ALB's definition), from the period actually measured.
            Some(requests / healthy.max(1) as f64 * 60.0 / elapsed.as_secs_f64().max(0.001))
        }
        ScalingMetric::TargetResponseTime => {
            let n = now.rt_count.saturating_sub(prev.rt_count);
            (n > 0).then(|| now.rt_sum_micros.saturating_sub(prev.rt_sum_micros) as f64 / 1e6 / n as f64)
        }
    }
}

async fn describe(ecs: &aws_sdk_ecs::Client, spec: &AutoscalingSpec) -> Result<u32, AwsError> {
    let out = ecs
        .describe_services()
        .cluster(&spec.ecs.cluster)
        .services(&spec.ecs.service)
        .send()
        .await
        .map_err(|e| AwsError::sdk("DescribeServices", e))?;
    let svc = out.services().first().ok_or_else(|| AwsError {
        operation: "DescribeServices",
        code: "ServiceNotFound".into(),
        message: format!("service {} not found in cluster {}", spec.ecs.service, spec.ecs.cluster),
    })?;
    Ok(svc.desired_count().max(0) as u32)
}

/// The metric as every replica published it, over the last period (None: no data).
async fn cloudwatch_metric(
    cw: &aws_sdk_cloudwatch::Client,
    group: &str,
    spec: &AutoscalingSpec,
    settings: Option<&CloudWatchSettings>,
) -> Result<Option<f64>, AwsError> {
    let Some(settings) = settings else { return Ok(None) };
    let (name, stat) = match spec.metric {
        ScalingMetric::RequestCountPerTarget => ("RequestCountPerTarget", "Sum"),
        ScalingMetric::TargetResponseTime => ("TargetResponseTime", "Average"),
    };
    let end = SystemTime::now();
    let start = end - spec.period;
    let metric = Metric::builder()
        .namespace(&settings.namespace)
        .metric_name(name)
        .dimensions(Dimension::builder().name("LoadBalancer").value(&settings.load_balancer).build())
        .dimensions(Dimension::builder().name("TargetGroup").value(group).build())
        .build();
    let query = MetricDataQuery::builder()
        .id("m")
        .metric_stat(
            MetricStat::builder().metric(metric).period(spec.period.as_secs().max(1) as i32).stat(stat).build(),
        )
        .return_data(true)
        .build();
    let out = cw
        .get_metric_data()
        .metric_data_queries(query)
        .start_time(start.into())
        .end_time(end.into())
        .send()
        .await
        .map_err(|e| AwsError::sdk("GetMetricData", e))?;
    let values: Vec<f64> = out.metric_data_results().iter().flat_map(|r| r.values().iter().copied()).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let v = match spec.metric {
        // Sum over replicas and datapoints of the window, normalised to per minute.
        ScalingMetric::RequestCountPerTarget => values.iter().sum::<f64>() * 60.0 / spec.period.as_secs_f64(),
        ScalingMetric::TargetResponseTime => values.iter().sum::<f64>() / values.len() as f64,
    };
    Ok(Some(v))
}

/// The Application Auto Scaling resource id of an ECS service.
pub fn resource_id(spec: &AutoscalingSpec) -> String {
    format!("service/{}/{}", spec.ecs.cluster, spec.ecs.service)
}

async fn register_with_application_autoscaling(
    state: &SharedState,
    group: &Arc<str>,
    spec: &AutoscalingSpec,
    cw: &CloudWatchSettings,
    sdk: &aws_config::SdkConfig,
) {
    use aws_sdk_applicationautoscaling::types::{
        CustomizedMetricSpecification, MetricDimension, MetricStatistic, PolicyType, ScalableDimension,
        ServiceNamespace, TargetTrackingScalingPolicyConfiguration,
    };
    let aas = aws_sdk_applicationautoscaling::Client::new(sdk);
    let rid = resource_id(spec);
    let (name, stat) = match spec.metric {
        ScalingMetric::RequestCountPerTarget => ("RequestCountPerTarget", MetricStatistic::Sum),
        ScalingMetric::TargetResponseTime => ("TargetResponseTime", MetricStatistic::Average),
    };
    let dims = [("LoadBalancer", cw.load_balancer.as_str()), ("TargetGroup", &**group)]
        .map(|(n, v)| MetricDimension::builder().name(n).value(v).build().expect("name and value are set"));
    let metric = CustomizedMetricSpecification::builder()
        .metric_name(name)
        .namespace(&cw.namespace)
        .set_dimensions(Some(dims.to_vec()))
        .statistic(stat)
        .build();
    let policy = TargetTrackingScalingPolicyConfiguration::builder()
        .target_value(spec.target)
        .customized_metric_specification(metric)
        .scale_out_cooldown(spec.scale_out_cooldown.as_secs() as i32)
        .scale_in_cooldown(spec.scale_in_cooldown.as_secs() as i32)
        .build()
        .expect("target_value is set");
    let mut delay = Duration::from_secs(1);
    loop {
        let registered = aas
            .register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(&rid)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .min_capacity(spec.min as i32)
            .max_capacity(spec.max as i32)
            .send()
            .await
            .map_err(|e| AwsError::sdk("RegisterScalableTarget", e));
        let put = match registered {
            Ok(_) => aas
                .put_scaling_policy()
                .policy_name(format!("pilotfish-{group}"))
                .service_namespace(ServiceNamespace::Ecs)
                .resource_id(&rid)
                .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                .policy_type(PolicyType::TargetTrackingScaling)
                .target_tracking_scaling_policy_configuration(policy.clone())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::sdk("PutScalingPolicy", e)),
            Err(e) => Err(e),
        };
        match put {
            Ok(()) => {
                tracing::info!(target_group = %group, resource = %rid, "registered a target-tracking policy with Application Auto Scaling");
                return;
            }
            Err(e) => {
                state.metrics.autoscaling_action(group, "error");
                tracing::warn!(target_group = %group, operation = e.operation, code = %e.code, error = %e.message, "Application Auto Scaling registration failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(300));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            target: 100.0,
            scale_out_cooldown: Duration::from_secs(60),
            scale_in_cooldown: Duration::from_secs(120),
        }
    }

    #[test]
    fn proportional_with_ceiling_and_clamps() {
        let (p, h, now) = (policy(), History::default(), Instant::now());
        assert_eq!(decide(&p, 2, Some(250.0), &h, now), Decision::Scale(5));
        assert_eq!(decide(&p, 2, Some(201.0), &h, now), Decision::Scale(5), "ceil(4.02) = 5");
        assert_eq!(decide(&p, 3, Some(100.0), &h, now), Decision::Hold("at target"));
        assert_eq!(
            decide(&p, 3, Some(100.0 / 3.0 * 3.0), &h, now),
            Decision::Hold("at target"),
            "float noise is not a task"
        );
        assert_eq!(decide(&p, 4, Some(1000.0), &h, now), Decision::Scale(10), "clamped to max");
        assert_eq!(decide(&p, 2, Some(0.0), &h, now), Decision::Scale(1), "clamped to min");
    }

    #[test]
    fn zero_tasks() {
        let (p, h, now) = (policy(), History::default(), Instant::now());
        assert_eq!(decide(&p, 0, Some(50.0), &h, now), Decision::Scale(1));
        let p0 = Policy { min: 0, ..policy() };
        assert_eq!(decide(&p0, 0, Some(0.0), &h, now), Decision::Hold("at target"));
        assert_eq!(decide(&p0, 0, Some(5.0), &h, now), Decision::Scale(1));
    }

    #[test]
    fn missing_data_never_scales_in() {
        let (p, h, now) = (policy(), History::default(), Instant::now());
        assert_eq!(decide(&p, 8, None, &h, now), Decision::Hold("metric missing"));
        assert_eq!(decide(&p, 8, Some(f64::NAN), &h, now), Decision::Hold("metric missing"));
        let p3 = Policy { min: 3, ..policy() };
        assert_eq!(decide(&p3, 1, None, &h, now), Decision::Scale(3), "below min is lifted even without data");
    }

    #[test]
    fn scale_in_is_at_most_half_a_step() {
        let (p, h, now) = (policy(), History::default(), Instant::now());
        assert_eq!(decide(&p, 10, Some(1.0), &h, now), Decision::Scale(5));
        assert_eq!(decide(&p, 5, Some(1.0), &h, now), Decision::Scale(3));
        assert_eq!(decide(&p, 2, Some(1.0), &h, now), Decision::Scale(1));
    }

    #[test]
    fn cooldowns_overlap_and_scale_out_wins() {
        let p = policy();
        let t0 = Instant::now();
        let after = |s: u64| t0 + Duration::from_secs(s);
        let h = History { last_scale_out: Some(t0), last_scale_in: None };
        assert_eq!(decide(&p, 2, Some(400.0), &h, after(30)), Decision::Hold("scale-out cooldown"));
        assert_eq!(decide(&p, 2, Some(400.0), &h, after(61)), Decision::Scale(8));
        // A scale-out also holds scale-in for the scale-in cooldown.
        assert_eq!(decide(&p, 8, Some(10.0), &h, after(100)), Decision::Hold("scale-in cooldown"));
        assert_eq!(decide(&p, 8, Some(10.0), &h, after(121)), Decision::Scale(4));
        // During a scale-in cooldown, more load still scales out at once.
        let h = History { last_scale_out: None, last_scale_in: Some(t0) };
        assert_eq!(decide(&p, 4, Some(300.0), &h, after(10)), Decision::Scale(10));
        assert_eq!(decide(&p, 4, Some(10.0), &h, after(10)), Decision::Hold("scale-in cooldown"));
    }
}
