//! DNS discovery against a real DNS server (dnsmasq on loopback, started here with its own
//! records): A records with a port, SRV records with their ports and weights, records changed
//! between lookups (picked up at the TTL, not at the hour-long `refresh`), NXDOMAIN and a server
//! that is down keeping the last known targets (errors counted), AAAA records.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::dns::Dnsmasq;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// The group's targets that take traffic (not draining), as `address weight`.
async fn targets(lb: &Lb, group: &str) -> BTreeSet<String> {
    live_targets(lb, group)
        .await
        .iter()
        .map(|t| format!("{} {}", t["address"].as_str().unwrap(), t["weight"]))
        .collect()
}

async fn wait_targets(lb: &Lb, group: &str, want: &[String]) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    let held = poll_until(WAIT, Duration::from_millis(50), || async { targets(lb, group).await == want }).await;
    assert!(held, "targets of {group}: want {want:?}, got {:?}", targets(lb, group).await);
}

async fn group_json(lb: &Lb, group: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&get(&client(), &lb.admin("/targets")).await.body).unwrap();
    v["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == group).cloned().unwrap()
}

fn errors(metrics: &str, group: &str) -> u64 {
    let key = format!("pilotfish_discovery_errors_total{{target_group=\"{group}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |n| n.trim().parse().unwrap())
}

fn config(group: &str, dns: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "{group}" }}

[[target_groups]]
name = "{group}"
deregistration_delay = "0s"
[target_groups.discovery]
dns = {{ {dns} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_follow_the_ttl_and_nxdomain_keeps_the_last_set() {
    let be = Backend::start("be").await;
    let p = be.addr.port();
    let Some(mut dns) = Dnsmasq::start("a", &["host-record=api.pf.test,127.0.0.1".into()], 1) else { return };
    // refresh is an hour: only the records' TTL (1 s) can make changes show up in time.
    let lb = Lb::start(&config(
        "api",
        &format!(r#"name = "api.pf.test", type = "A", port = {p}, refresh = "1h", resolver = "{}""#, dns.addr),
    ));
    wait_targets(&lb, "api", &[format!("127.0.0.1:{p} 100")]).await;
    let got = get(&client(), &lb.url("web", "/a")).await;
    assert_eq!((got.status.as_u16(), got.backend()), (200, "be"));
    assert_eq!(group_json(&lb, "api").await["source"], "dns");

    // Two records now, the first gone: applied as a diff.
    dns.set(&["host-record=api.pf.test,127.0.0.2".into(), "host-record=api.pf.test,127.0.0.3".into()]);
    wait_targets(&lb, "api", &[format!("127.0.0.2:{p} 100"), format!("127.0.0.3:{p} 100")]).await;

    // NXDOMAIN: the name is gone from DNS, the targets are not; the error is counted and shown.
    let before = errors(&get(&client(), &lb.admin("/metrics")).await.body, "api");
    dns.set(&["host-record=other.pf.test,127.0.0.9".into()]);
    let counted = poll_until(WAIT, Duration::from_millis(50), || async {
        errors(&get(&client(), &lb.admin("/metrics")).await.body, "api") > before
    })
    .await;
    assert!(counted, "NXDOMAIN is counted as a discovery error");
    let g = group_json(&lb, "api").await;
    assert!(g["discovery_error"].as_str().unwrap_or_default().contains("NXDOMAIN"), "{g}");
    assert_eq!(targets(&lb, "api").await, [format!("127.0.0.2:{p} 100"), format!("127.0.0.3:{p} 100")].into());

    // The server down altogether: the same.
    let before = errors(&get(&client(), &lb.admin("/metrics")).await.body, "api");
    drop(dns);
    let counted = poll_until(WAIT, Duration::from_millis(50), || async {
        errors(&get(&client(), &lb.admin("/metrics")).await.body, "api") > before
    })
    .await;
    assert!(counted, "a server that does not answer is counted as a discovery error");
    assert_eq!(targets(&lb, "api").await, [format!("127.0.0.2:{p} 100"), format!("127.0.0.3:{p} 100")].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights_and_traffic_follows_them() {
    let (b1, b2, b3) = (Backend::start("one").await, Backend::start("two").await, Backend::start("three").await);
    let (p1, p2, p3) = (b1.addr.port(), b2.addr.port(), b3.addr.port());
    let records = |set: &[(u16, u16, u16)]| -> Vec<String> {
        let mut r = vec!["host-record=node.pf.test,127.0.0.1".to_string()];
        r.extend(
            set.iter().map(|(port, prio, w)| format!("srv-host=_http._tcp.api.pf.test,node.pf.test,{port},{prio},{w}")),
        );
        r
    };
    let Some(mut dns) = Dnsmasq::start("srv", &records(&[(p1, 0, 10), (p2, 0, 30), (p3, 1, 50)]), 1) else { return };
    let lb = Lb::start(&config(
        "api",
        &format!(r#"name = "_http._tcp.api.pf.test", type = "SRV", refresh = "1h", resolver = "{}""#, dns.addr),
    ));
    // The lowest priority's records; the priority-1 record is a fallback, not a target.
    wait_targets(&lb, "api", &[format!("127.0.0.1:{p1} 10"), format!("127.0.0.1:{p2} 30")]).await;
    let mut seen = BTreeSet::new();
    for i in 0..40 {
        let got = get(&client(), &lb.url("web", &format!("/{i}"))).await;
        assert_eq!(got.status.as_u16(), 200);
        seen.insert(got.backend().to_string());
    }
    assert_eq!(seen, ["one".to_string(), "two".to_string()].into(), "both records get traffic, the fallback none");
    assert_eq!(b3.requests(), 0);

    // The records change: one gone, weights changed; all-zero weights would be equal.
    dns.set(&records(&[(p2, 0, 0), (p3, 0, 0)]));
    wait_targets(&lb, "api", &[format!("127.0.0.1:{p2} 100"), format!("127.0.0.1:{p3} 100")]).await;
    // Weights beyond pilotfish's 999 are scaled to the largest; a target name that does not
    // resolve is left out, the others stay.
    let mut r = records(&[(p2, 0, 4000), (p3, 0, 2000)]);
    r.push("srv-host=_http._tcp.api.pf.test,gone.pf.test,9,0,10".into());
    dns.set(&r);
    wait_targets(&lb, "api", &[format!("127.0.0.1:{p2} 999"), format!("127.0.0.1:{p3} 499")]).await;
    let got = get(&client(), &lb.url("web", "/after")).await;
    assert_eq!(got.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_records_and_configuration_errors() {
    let Some(dns) = Dnsmasq::start("aaaa", &["host-record=v6.pf.test,::1".into()], 30) else { return };
    let lb = Lb::start(&config(
        "v6",
        &format!(r#"name = "v6.pf.test", type = "AAAA", port = 8080, resolver = "{}""#, dns.addr),
    ));
    wait_targets(&lb, "v6", &["[::1]:8080 100".to_string()]).await;

    // What check refuses, each at its place.
    let control = lb.server.control();
    for (dns, says) in [
        (r#"name = "api.pf.test", type = "A""#.to_string(), "A and AAAA records name no port"),
        (r#"name = "_x._tcp.pf.test", type = "SRV", port = 80"#.to_string(), "SRV records carry the port"),
        (r#"name = "bad name.pf.test", port = 80"#.to_string(), "bad DNS name"),
        (r#"name = "a.pf.test", port = 80, resolver = "dns.example""#.to_string(), "bad resolver"),
        (r#"name = "a.pf.test", port = 80, type = "MX""#.to_string(), "unknown variant"),
    ] {
        let out = control.reload_text("test.toml", &config("v6", &dns));
        assert!(!out.ok(), "{dns}: accepted");
        let err = out.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
        assert!(err.contains(says) && err.starts_with("test.toml:"), "{dns}: {err}");
    }
    // The old configuration keeps serving.
    assert_eq!(targets(&lb, "v6").await, ["[::1]:8080 100".to_string()].into());
}
