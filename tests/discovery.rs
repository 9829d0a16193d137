//! Service discovery against moto_server: Cloud Map instances with 127.0.0.1 addresses of real
//! backends receive traffic; deregistration and UNHEALTHY drain; an AWS outage keeps the last
//! known targets (errors counted) and updates resume after it. ECS tasks (moto gives them random
//! 10.x addresses, so no traffic is ever sent there) are asserted through `/targets` only.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::aws::{aws_env, Moto};
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn addresses(lb: &Lb, group: &str) -> HashSet<String> {
    live_targets(lb, group).await.iter().map(|t| t["address"].as_str().unwrap().to_string()).collect()
}

async fn wait_addresses(lb: &Lb, group: &str, want: &HashSet<String>) {
    let held = poll_until(WAIT, Duration::from_millis(50), || async { &addresses(lb, group).await == want }).await;
    assert!(held, "targets of {group}: want {want:?}, got {:?}", addresses(lb, group).await);
}

fn set(addrs: &[&Backend]) -> HashSet<String> {
    addrs.iter().map(|b| b.addr.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_instances_get_traffic_drain_and_survive_an_outage() {
    aws_env();
    let mut moto = Moto::start().await;
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let ids = moto.seed(json!({"op": "cloud_map_service", "namespace": "prod.local", "service": "api"}));
    let sid = ids["service_id"].as_str().unwrap().to_string();
    for (id, be) in [("i-a", &a), ("i-b", &b)] {
        moto.seed(
            json!({"op": "register", "service_id": sid, "instance_id": id, "ip": "127.0.0.1", "port": be.addr.port()}),
        );
    }
    let lb = Lb::start(&format!(
        r#"
[aws]
region = "us-east-1"
endpoint_url = "{}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "api" }}

[[target_groups]]
name = "api"
deregistration_delay = "5s"

[target_groups.discovery]
cloud_map = {{ namespace = "prod.local", service = "api", refresh = "200ms" }}
"#,
        moto.endpoint()
    ));
    wait_addresses(&lb, "api", &set(&[&a, &b])).await;
    let t: serde_json::Value = serde_json::from_str(&get(&client(), &lb.admin("/targets")).await.body).unwrap();
    assert_eq!(t["target_groups"][0]["source"], "cloud_map");
    assert!(t["target_groups"][0]["last_refresh"].is_string(), "{t}");
    assert_eq!(t["target_groups"][0]["targets"][0]["source"], "cloud_map");
    let cl = client();
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let r = get(&cl, &lb.url("web", "/")).await;
        assert_eq!(r.status.as_u16(), 200);
        seen.insert(r.backend().to_string());
    }
    assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]));

    // Deregistration drains b; a custom UNHEALTHY status removes a; c joins.
    moto.seed(
        json!({"op": "register", "service_id": sid, "instance_id": "i-c", "ip": "127.0.0.1", "port": c.addr.port()}),
    );
    moto.seed(json!({"op": "deregister", "service_id": sid, "instance_id": "i-b"}));
    moto.seed(json!({"op": "health", "service_id": sid, "instance_id": "i-a", "status": "UNHEALTHY"}));
    wait_addresses(&lb, "api", &set(&[&c])).await;
    for _ in 0..5 {
        assert_eq!(get(&cl, &lb.url("web", "/")).await.backend(), "c");
    }

    // Outage: the last known targets keep serving and the errors are counted.
    moto.stop();
    let counted = wait_metrics_at(lb.server.admin_addr(), WAIT, |l| {
        l.starts_with("pilotfish_discovery_errors_total{target_group=\"api\"}") && !l.ends_with(" 0")
    })
    .await;
    assert!(counted, "no discovery error counted:\n{}", get(&cl, &lb.admin("/metrics")).await.body);
    for _ in 0..5 {
        let r = get(&cl, &lb.url("web", "/")).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "c"), "last known targets serve during the outage");
    }
    assert_eq!(addresses(&lb, "api").await, set(&[&c]));

    // moto is back (empty): once seeded again, updates resume.
    moto.restart().await;
    let ids = moto.seed(json!({"op": "cloud_map_service", "namespace": "prod.local", "service": "api"}));
    let sid = ids["service_id"].as_str().unwrap();
    moto.seed(
        json!({"op": "register", "service_id": sid, "instance_id": "i-b2", "ip": "127.0.0.1", "port": b.addr.port()}),
    );
    wait_addresses(&lb, "api", &set(&[&b])).await;
    assert_eq!(get(&cl, &lb.url("web", "/")).await.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_aws_at_start_leaves_the_group_empty_not_the_balancer_down() {
    aws_env();
    let dead = dead_addr();
    let lb = Lb::start(&format!(
        r#"
[aws]
region = "us-east-1"
endpoint_url = "http://{dead}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "api" }}

[[target_groups]]
name = "api"

[target_groups.discovery]
cloud_map = {{ namespace = "prod.local", service = "api", refresh = "200ms" }}
"#
    ));
    let c = client();
    assert_eq!(get(&c, &lb.url("web", "/")).await.status.as_u16(), 503);
    let r = get(&c, &lb.admin("/readyz")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.body.contains("empty target groups: api"), "{}", r.body);
    let targets =
        || async { serde_json::from_str::<serde_json::Value>(&get(&c, &lb.admin("/targets")).await.body).unwrap() };
    let reported = poll_until(WAIT, Duration::from_millis(50), || async {
        targets().await["target_groups"][0]["discovery_error"].is_string()
    })
    .await;
    let t = targets().await;
    assert!(reported, "no discovery_error: {t}");
    let err = t["target_groups"][0]["discovery_error"].as_str().unwrap();
    assert!(err.starts_with("DiscoverInstances failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_running_tasks_become_targets_in_batches_and_stopped_ones_leave() {
    aws_env();
    let moto = Moto::start().await;
    let seeded =
        moto.seed(json!({"op": "ecs_service", "cluster": "prod", "service": "api", "port": 8080, "tasks": 105}));
    let tasks = seeded["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 105);
    let want: HashSet<String> = tasks.iter().map(|t| format!("{}:8080", t["ip"].as_str().unwrap())).collect();
    // No rule routes to "api" and health checks are off: nothing is ever sent to the 10.x addresses.
    let lb = Lb::start(&format!(
        r#"
[aws]
region = "us-east-1"
endpoint_url = "{}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[target_groups]]
name = "api"
deregistration_delay = "0s"

[target_groups.discovery]
ecs = {{ cluster = "prod", service = "api", container_name = "app", container_port = 8080, refresh = "300ms" }}
"#,
        moto.endpoint()
    ));
    wait_addresses(&lb, "api", &want).await;
    let t: serde_json::Value = serde_json::from_str(&get(&client(), &lb.admin("/targets")).await.body).unwrap();
    assert_eq!(t["target_groups"][0]["source"], "ecs");

    let mut want = want;
    for t in &tasks[..2] {
        moto.seed(json!({"op": "stop_task", "cluster": "prod", "arn": t["arn"]}));
        want.remove(&format!("{}:8080", t["ip"].as_str().unwrap()));
    }
    wait_addresses(&lb, "api", &want).await;
    assert_eq!(addresses(&lb, "api").await.len(), 103);
}
