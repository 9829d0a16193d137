//! CloudWatch publishing and ECS autoscaling against moto_server: published sums equal the
//! requests sent; the autoscaler scales a service out under load and back in after the cooldown
//! within min/max; missing metrics never scale in; an unreachable CloudWatch changes nothing and
//! is counted; application-autoscaling mode leaves the documented policy in moto.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::aws::{aws_env, Moto};
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn base(endpoint: &str, be: &Backend, extra_tg: &str) -> String {
    format!(
        r#"
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[cloudwatch]
namespace = "Pilotfish"
load_balancer = "edge"
interval = "1s"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[rules]]
name = "empty"
listeners = ["web"]
priority = 1
path = ["/empty"]
forward = "empty"

[[rules]]
name = "api"
listeners = ["web"]
priority = 2
path = ["/*"]
forward = "api"

[[target_groups]]
name = "empty"
targets = []

[[target_groups]]
name = "api"
targets = ["{}"]
{extra_tg}
"#,
        be.addr
    )
}

fn cw_sum(moto: &Moto, metric: &str, dims: serde_json::Value) -> f64 {
    moto.seed(json!({"op": "cw_sum", "namespace": "Pilotfish", "metric": metric, "dimensions": dims}))["sum"]
        .as_f64()
        .unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let held = poll_until(WAIT, Duration::from_millis(200), || std::future::ready(f())).await;
    assert!(held, "timed out waiting for {what}");
}

fn desired(moto: &Moto) -> u64 {
    moto.seed(json!({"op": "desired_count", "cluster": "prod", "service": "api"}))["desired"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_metrics_add_up_to_the_requests_sent() {
    aws_env();
    let moto = Moto::start().await;
    let be = Backend::start("be").await;
    let lb = Lb::start(&base(&moto.endpoint(), &be, ""));
    let c = client();
    for _ in 0..37 {
        assert_eq!(get(&c, &lb.url("web", "/x")).await.status.as_u16(), 200);
    }
    assert_eq!(get(&c, &lb.url("web", "/empty")).await.status.as_u16(), 503);
    let tg = |g: &str| json!({"LoadBalancer": "edge", "TargetGroup": g});
    wait_until("RequestCount = 37 for the api group", || cw_sum(&moto, "RequestCount", tg("api")) == 37.0).await;
    assert_eq!(cw_sum(&moto, "HTTPCode_Target_2XX_Count", tg("api")), 37.0);
    assert_eq!(cw_sum(&moto, "RequestCountPerTarget", tg("api")), 37.0, "one healthy target");
    wait_until("HTTPCode_ELB_5XX_Count = 1 for the empty group", || {
        cw_sum(&moto, "HTTPCode_ELB_5XX_Count", tg("empty")) == 1.0
    })
    .await;
    assert_eq!(cw_sum(&moto, "HTTPCode_Target_5XX_Count", tg("empty")), 0.0, "a balancer 503 is not a target 5xx");
    // moto matches dimensions as a subset (real CloudWatch matches exactly), so the LoadBalancer
    // query adds the per-group datums: the balancer-level RequestCount is the difference.
    let lb_only = cw_sum(&moto, "RequestCount", json!({"LoadBalancer": "edge"})) - 38.0;
    assert_eq!(lb_only, 38.0, "balancer-level RequestCount counts every request");
    assert!(cw_sum(&moto, "ProcessedBytes", json!({"LoadBalancer": "edge"})) >= 37.0 * 2.0);
    let samples = moto.seed(
        json!({"op": "cw_sum", "namespace": "Pilotfish", "metric": "TargetResponseTime", "dimensions": tg("api")}),
    )["samples"]
        .as_f64()
        .unwrap();
    assert_eq!(samples, 37.0, "TargetResponseTime carries one sample per request (value/count arrays)");

    // deploy/cloudwatch-dashboard.json shows only metrics pilotfish publishes.
    let names = moto.seed(json!({"op": "cw_names", "namespace": "Pilotfish"}))["names"].clone();
    let published: Vec<String> = serde_json::from_value(names).unwrap();
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cloudwatch-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // Plain rows name [namespace, metric, dimension, value...]; per-group widgets SEARCH for
    // `MetricName="..."` under {Pilotfish,LoadBalancer,TargetGroup}.
    let search = regex::Regex::new(r#"\{(\w+),LoadBalancer,TargetGroup\} MetricName="(\w+)""#).unwrap();
    let mut shown = 0;
    for w in body["widgets"].as_array().unwrap() {
        for row in w["properties"]["metrics"].as_array().into_iter().flatten().filter_map(|m| m.as_array()) {
            let (namespace, name) = match (&row[0], row.get(1)) {
                (serde_json::Value::Object(e), _) => {
                    let expr = e["expression"].as_str().unwrap();
                    let c = search.captures(expr).unwrap_or_else(|| panic!("a SEARCH for one metric: {expr}"));
                    (c[1].to_string(), c[2].to_string())
                }
                (ns, Some(name)) => (ns.as_str().unwrap().to_string(), name.as_str().unwrap().to_string()),
                _ => panic!("a metrics row: {row:?}"),
            };
            assert!(published.contains(&name), "{name} (cloudwatch-dashboard.json) is not published: {published:?}");
            assert_eq!(namespace, "Pilotfish", "the default namespace");
            shown += 1;
        }
    }
    assert!(shown >= 10, "the CloudWatch dashboard shows the ALB-named metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_scales_out_under_load_and_back_in_after_the_cooldown() {
    aws_env();
    let moto = Moto::start().await;
    moto.seed(json!({"op": "ecs_simple_service", "cluster": "prod", "service": "api", "desired": 2}));
    let be = Backend::start("be").await;
    let scaling = r#"
[target_groups.autoscaling]
ecs = { cluster = "prod", service = "api" }
min = 1
max = 4
metric = "RequestCountPerTarget"
target = 600.0
source = "local"
period = "1s"
scale_out_cooldown = "1s"
scale_in_cooldown = "2s"
"#;
    let lb = Lb::start(&base(&moto.endpoint(), &be, scaling));
    // ~50 requests/s to one target = ~3000/min per target against a target of 600: scale out,
    // clamped to max = 4. The load runs until the scale-out is seen (not for a fixed time).
    let url = lb.url("web", "/load");
    let loading = Arc::new(AtomicBool::new(true));
    let load = {
        let loading = loading.clone();
        tokio::spawn(async move {
            let c = client();
            while loading.load(Ordering::Relaxed) {
                let _ = get(&c, &url).await;
                // Paces the load (the request rate is the input under test), not a wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until("scale-out to max = 4", || desired(&moto) == 4).await;
    // The dashboard's data says what the autoscaler decided.
    let stats: serde_json::Value = serde_json::from_str(&get(&client(), &lb.admin("/stats")).await.body).unwrap();
    let api = stats["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == "api").unwrap().clone();
    assert!(api["autoscaling"]["desired"].as_i64().is_some(), "{api}");
    let said = api["autoscaling"]["last_decision"].as_str().unwrap_or_default().to_string();
    assert!(said.contains("RequestCountPerTarget") && said.contains("target 600"), "{api}");
    loading.store(false, Ordering::Relaxed);
    load.await.unwrap();
    // No load: scale in, at most halving per step, down to min = 1.
    wait_until("scale-in to min = 1", || desired(&moto) == 1).await;
    let m = get(&client(), &lb.admin("/metrics")).await.body;
    let count = |dir: &str| -> u64 {
        m.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "pilotfish_autoscaling_actions_total{{target_group=\"api\",direction=\"{dir}\"}} "
                ))
            })
            .map_or(0, |v| v.parse().unwrap())
    };
    assert!(count("out") >= 1, "{m}");
    assert!(count("in") >= 2, "4 -> 2 -> 1 takes two halving steps: {m}");
    assert!(m.contains("pilotfish_autoscaling_desired{target_group=\"api\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_metrics_never_scale_in() {
    aws_env();
    let moto = Moto::start().await;
    moto.seed(json!({"op": "ecs_simple_service", "cluster": "prod", "service": "api", "desired": 3}));
    let be = Backend::start("be").await;
    // No request reaches "api", so CloudWatch has no TargetResponseTime: no data, no change.
    let scaling = r#"
[target_groups.autoscaling]
ecs = { cluster = "prod", service = "api" }
min = 1
max = 5
metric = "TargetResponseTime"
target = 0.5
source = "cloudwatch"
period = "1s"
scale_out_cooldown = "1s"
scale_in_cooldown = "1s"
"#;
    let lb = Lb::start(&base(&moto.endpoint(), &be, scaling));
    // Three decisions, each a hold for lack of data.
    assert!(
        wait_metric(&lb, "pilotfish_autoscaling_actions_total{target_group=\"api\",direction=\"hold\"} 3", WAIT).await
    );
    let m = get(&client(), &lb.admin("/metrics")).await.body;
    assert!(!m.contains("direction=\"in\"") && !m.contains("direction=\"out\""), "{m}");
    assert!(m.contains("pilotfish_autoscaling_desired{target_group=\"api\"} 3"), "{m}");
    assert_eq!(desired(&moto), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cloudwatch_changes_nothing_and_is_counted() {
    aws_env();
    let be = Backend::start("be").await;
    let dead = dead_addr();
    let scaling = r#"
[target_groups.autoscaling]
ecs = { cluster = "prod", service = "api" }
min = 1
max = 5
metric = "RequestCountPerTarget"
target = 100.0
period = "1s"
"#;
    let lb = Lb::start(&base(&format!("http://{dead}"), &be, scaling));
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &lb.url("web", "/x")).await.status.as_u16(), 200, "traffic is unaffected");
    }
    let metrics = || async { get(&c, &lb.admin("/metrics")).await.body };
    let both_counted = poll_until(WAIT, Duration::from_millis(200), || async {
        let m = metrics().await;
        let publish_errors = m.contains("pilotfish_cloudwatch_publish_errors_total")
            && !m.contains("pilotfish_cloudwatch_publish_errors_total 0");
        let scaling_errors =
            m.contains("pilotfish_autoscaling_actions_total{target_group=\"api\",direction=\"error\"}");
        publish_errors && scaling_errors
    })
    .await;
    let m = metrics().await;
    assert!(both_counted, "publish and scaling errors are counted: {m}");
    assert!(!m.contains("direction=\"out\"") && !m.contains("direction=\"in\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_autoscaling_mode_registers_the_documented_policy() {
    aws_env();
    let moto = Moto::start().await;
    moto.seed(json!({"op": "ecs_simple_service", "cluster": "prod", "service": "api", "desired": 2}));
    let be = Backend::start("be").await;
    let scaling = r#"
[target_groups.autoscaling]
ecs = { cluster = "prod", service = "api" }
min = 2
max = 12
metric = "RequestCountPerTarget"
target = 1000.0
mode = "application-autoscaling"
period = "60s"
scale_out_cooldown = "60s"
scale_in_cooldown = "300s"
"#;
    let _lb = Lb::start(&base(&moto.endpoint(), &be, scaling));
    let mut state = json!(null);
    wait_until("a scalable target and a policy", || {
        state = moto.seed(json!({"op": "aas_describe"}));
        !state["policies"].as_array().unwrap().is_empty()
    })
    .await;
    let t = &state["targets"][0];
    assert_eq!(t["ResourceId"], "service/prod/api");
    assert_eq!(t["ScalableDimension"], "ecs:service:DesiredCount");
    assert_eq!((t["MinCapacity"].as_u64(), t["MaxCapacity"].as_u64()), (Some(2), Some(12)));
    let p = &state["policies"][0];
    assert_eq!(p["PolicyName"], "pilotfish-api");
    assert_eq!(p["PolicyType"], "TargetTrackingScaling");
    let cfg = &p["TargetTrackingScalingPolicyConfiguration"];
    assert_eq!(cfg["TargetValue"].as_f64(), Some(1000.0));
    assert_eq!((cfg["ScaleOutCooldown"].as_u64(), cfg["ScaleInCooldown"].as_u64()), (Some(60), Some(300)));
    let spec = &cfg["CustomizedMetricSpecification"];
    assert_eq!(
        (spec["MetricName"].as_str(), spec["Namespace"].as_str(), spec["Statistic"].as_str()),
        (Some("RequestCountPerTarget"), Some("Pilotfish"), Some("Sum"))
    );
    let dims: Vec<(String, String)> = spec["Dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["Name"].as_str().unwrap().into(), d["Value"].as_str().unwrap().into()))
        .collect();
    assert_eq!(dims, vec![("LoadBalancer".into(), "edge".into()), ("TargetGroup".into(), "api".into())]);
}
