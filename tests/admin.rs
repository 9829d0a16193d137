//! The admin API, the access log and the reload entry point, through real sockets.

mod common;

use std::time::Duration;

use common::*;
use pilotfish::server::{ConfigSource, Options, Server, StartError};

fn config(be: &Backend, rule_body: &str, extra_listener: bool) -> String {
    let extra = if extra_listener { "[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n" } else { "" };
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "g" }}

{extra}
[[rules]]
name = "fixed"
listeners = ["web"]
priority = 1
path = ["/fixed"]
fixed_response = {{ status = 200, body = "{rule_body}" }}

[[target_groups]]
name = "g"
targets = ["{}"]
"#,
        be.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_with_documented_shapes() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "one", false));
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &lb.url("web", "/x")).await.status.as_u16(), 200);
    }
    let h = get(&c, &lb.admin("/healthz")).await;
    assert_eq!(h.status.as_u16(), 200);
    assert_eq!(get(&c, &lb.admin("/readyz")).await.status.as_u16(), 200);

    let m = get(&c, &lb.admin("/metrics")).await.body;
    for want in [
        "pilotfish_requests_total{listener=\"web\",target_group=\"g\",code=\"200\"} 3",
        "pilotfish_request_duration_seconds_count{listener=\"web\"} 3",
        "pilotfish_target_response_seconds_count{target_group=\"g\"} 3",
        "pilotfish_active_connections{listener=\"web\"}",
        "pilotfish_targets{target_group=\"g\",state=\"healthy\"} 1",
        "pilotfish_config_generation 1",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }

    // The client pools connections; how many it opened for 3 sequential requests is its choice.
    let conns: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pilotfish_connections_total{listener=\"web\"} "))
        .expect("connections_total for web")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&conns), "{conns}");

    let t: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/targets")).await.body).unwrap();
    let target = &t["target_groups"][0]["targets"][0];
    assert_eq!(t["target_groups"][0]["name"], "g");
    assert_eq!(target["address"], be.addr.to_string());
    assert_eq!(target["state"], "healthy");
    assert_eq!(target["in_flight"], 0);

    let cfg: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/config")).await.body).unwrap();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["listeners"][0]["name"], "web");
    assert_eq!(cfg["target_groups"][0]["targets"][0], be.addr.to_string());
    // In the configuration's own spellings.
    assert_eq!(cfg["listeners"][0]["protocol"], "http");
    assert_eq!(
        (&cfg["target_groups"][0]["algorithm"], &cfg["target_groups"][0]["protocol"]),
        (&"round_robin".into(), &"http1".into())
    );

    assert_eq!(get(&c, &lb.admin("/nope")).await.status.as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_with_the_documented_fields() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "one", false));
    let r =
        get_with(&client(), &lb.url("web", "/x?y=1"), &[("user-agent", "tester/1"), ("host", "shop.example")]).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(eventually(Duration::from_secs(5), || !lb.log.lines().is_empty()).await);
    let line = &lb.log.lines()[0];
    for key in [
        "time",
        "client",
        "listener",
        "rule",
        "target_group",
        "target",
        "method",
        "host",
        "path",
        "status",
        "request_processing_time",
        "target_processing_time",
        "response_processing_time",
        "bytes_in",
        "bytes_out",
        "user_agent",
        "request_id",
        "error",
    ] {
        assert!(line.get(key).is_some(), "missing {key} in {line}");
    }
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "shop.example");
    assert_eq!(line["path"], "/x?y=1");
    assert_eq!(line["target_group"], "g");
    assert_eq!(line["target"], be.addr.to_string());
    assert_eq!(line["user_agent"], "tester/1");
    assert_eq!(line["bytes_out"], 2, "the backend's body is \"be\"");
    assert!(line["response_processing_time"].as_f64().unwrap() >= 0.0);
    let id = line["request_id"].as_str().unwrap();
    assert_eq!(be.last().headers.get("x-request-id").unwrap().to_str().unwrap(), id, "logged id is the forwarded one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_rules_and_listeners_or_keeps_the_old_config() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "one", false));
    let c = client();
    let control = lb.server.control().clone();
    assert_eq!(get(&c, &lb.url("web", "/fixed")).await.body, "one");
    let web_addr = lb.addr("web");
    let target_before = get(&c, &lb.admin("/targets")).await.body;

    // A good reload: new rule body, a listener added; "web" keeps its socket.
    let out = control.reload_text("test.toml", &config(&be, "two", true));
    assert!(out.ok(), "{:?}", out.errors);
    assert_eq!(out.generation, 2);
    assert_eq!(get(&c, &lb.url("web", "/fixed")).await.body, "two");
    assert_eq!(lb.addr("web"), web_addr);
    let extra = lb.addr("extra");
    assert_eq!(get(&c, &format!("http://{extra}/fixed")).await.status.as_u16(), 404, "new listener serves its default");
    assert_eq!(
        get(&c, &lb.admin("/targets")).await.body.replace("\"generation\": 2", "\"generation\": 1"),
        target_before
    );

    // A bad reload changes nothing and says why, with line:col; a warning found with the error
    // is reported as a warning, not as a reason for the rejection.
    let unused = "\n[[target_groups]]\nname = \"unused\"\ntargets = [\"127.0.0.1:9\"]\n";
    let bad = config(&be, "three", false).replace("priority = 1", "priority = 0") + unused;
    let out = control.reload_text("test.toml", &bad);
    assert!(!out.ok());
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert!(out.errors[0].to_string().starts_with("test.toml:"), "{}", out.errors[0]);
    assert!(out.warnings.iter().any(|w| w.to_string().contains("\"unused\" is not used")), "{:?}", out.warnings);
    assert_eq!(get(&c, &lb.url("web", "/fixed")).await.body, "two");
    assert_eq!(lb.server.listener_addr("extra"), Some(extra));

    // Settings fixed at start-up: the reload applies the rest, warns at each such key, and
    // /config keeps showing what is in force.
    let before: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/config")).await.body).unwrap();
    let text = format!(
        "[server]\nworker_threads = 7\nmax_connections = 123\nadmin_bind = \"127.0.0.1:1\"\n{}",
        config(&be, "three", true)
    );
    let out = control.reload_text("test.toml", &text);
    assert!(out.ok(), "{:?}", out.errors);
    let warned: Vec<String> = out.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warned
            .iter()
            .any(|w| w.starts_with("test.toml:2:18: warning: worker_threads = 7 takes effect at the next start")),
        "{warned:?}"
    );
    assert!(
        warned
            .iter()
            .any(|w| w.starts_with("test.toml:4:14: warning: admin_bind = 127.0.0.1:1 takes effect at the next start")),
        "{warned:?}"
    );
    assert!(!warned.iter().any(|w| w.contains("max_connections")), "max_connections applies live: {warned:?}");
    assert_eq!(get(&c, &lb.url("web", "/fixed")).await.body, "three");
    let now: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/config")).await.body).unwrap();
    for key in ["worker_threads", "admin_bind"] {
        assert_eq!(now["server"][key], before["server"][key], "{key} in force");
    }
    assert_eq!(now["server"]["max_connections"], 123);
    assert_eq!(now["server"]["admin_bind"], "127.0.0.1:0");

    // A reload that cannot bind is rejected with the bind error, its warnings still warnings; a
    // max_connections beyond what the process can count is refused at its key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = config(&be, "three", true).replace(
        "name = \"extra\"\nbind = \"127.0.0.1:0\"",
        &format!("name = \"extra\"\nbind = \"{}\"", taken.local_addr().unwrap()),
    ) + unused;
    let out = control.reload_text("test.toml", &text);
    assert!(out.errors.iter().any(|e| e.message.contains("cannot bind")), "{:?}", out.errors);
    assert!(out.warnings.iter().any(|w| w.message.contains("\"unused\" is not used")), "{:?}", out.warnings);
    let out = control
        .reload_text("test.toml", &format!("[server]\nmax_connections = {}\n{}", 1u64 << 40, config(&be, "x", true)));
    assert!(
        out.errors.iter().any(|e| e.to_string().starts_with("test.toml:2:19: max_connections must be between 1 and")),
        "{:?}",
        out.errors
    );
    assert_eq!(get(&c, &lb.url("web", "/fixed")).await.body, "three");

    // Removing the listener closes it.
    let out = control.reload_text("test.toml", &config(&be, "four", false));
    assert!(out.ok());
    assert!(lb.server.listener_addr("extra").is_none());
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(extra).is_err()).await,
        "removed listener stops accepting"
    );

    let m = get(&c, &lb.admin("/metrics")).await.body;
    assert!(m.contains("pilotfish_config_reloads_total{result=\"success\"} 3"), "{m}");
    assert!(m.contains("pilotfish_config_reloads_total{result=\"failure\"} 3"), "{m}");
    assert!(m.contains("pilotfish_config_generation 4"), "{m}");
}

/// A listener that cannot bind is reported at its `bind` key (line and column), on reload and at
/// start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_are_reported_at_the_bind_key() {
    let be = Backend::start("be").await;
    let lb = Lb::start(&config(&be, "one", false));
    let control = lb.server.control().clone();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = config(&be, "two", true)
        .replace("name = \"extra\"\nbind = \"127.0.0.1:0\"", &format!("name = \"extra\"\nbind = \"{addr}\""));
    let line = 1 + text.lines().position(|l| l == format!("bind = \"{addr}\"")).expect("the extra listener's bind");
    assert!(line > 1, "the key is not on the first line, where unlocated errors go");

    let out = control.reload_text("test.toml", &text);
    let want = format!("test.toml:{line}:8: listener \"extra\": cannot bind {addr}");
    assert!(out.errors.iter().any(|e| e.to_string().starts_with(&want)), "want {want:?} in {:?}", out.errors);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert!(lb.server.listener_addr("extra").is_none(), "the rejected reload bound nothing");

    let text = format!("[server]\nadmin_bind = \"127.0.0.1:0\"\n{text}");
    let started = Server::start(Options {
        config: ConfigSource::Text { name: "start.toml".into(), text },
        access_log: Some(Box::new(LogSink::default())),
        signals: false,
        poll: None,
    });
    let Err(e @ StartError::Bind(_)) = started else { panic!("start-up binds a taken port") };
    let want = format!("start.toml:{}:8: listener \"extra\": cannot bind {addr}", line + 2);
    assert!(e.to_string().lines().any(|l| l.starts_with(&want)), "want {want:?} in {e}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pilotfish_cannot_share_a_listening_port() {
    // Listeners are groups of SO_REUSEPORT sockets, one per worker; a second process (or a
    // second start) on the same address must still fail as it always did, never join the group
    // and take a share of the first one's connections.
    let be = Backend::start("be").await;
    let first = Lb::start(&format!("[server]\nworker_threads = 2\n{}", config(&be, "one", false)));
    let addr = first.addr("web");
    let text = config(&be, "two", false).replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"{addr}\""), 1);
    let started = Server::start(Options {
        config: ConfigSource::Text {
            name: "second.toml".into(),
            text: format!("[server]\nadmin_bind = \"127.0.0.1:0\"\n{text}"),
        },
        access_log: Some(Box::new(LogSink::default())),
        signals: false,
        poll: None,
    });
    let Err(e @ StartError::Bind(_)) = started else { panic!("a second server bound {addr}") };
    assert!(e.to_string().contains(&format!("cannot bind {addr}")), "{e}");
    // The first keeps serving on it.
    assert_eq!(get(&client(), &first.url("web", "/")).await.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_whole_file_and_rebuilds_it() {
    let be = Backend::start("be").await;
    let cfg = format!(
        r#"
[server]
idle_timeout = "45s"
max_headers = 80

[access_log]
format = "json"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
max_request_body = 1048576
default_action = {{ fixed_response = {{ status = 404, content_type = "application/json", body = "{{}}" }} }}

[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
default_action = {{ redirect = {{ protocol = "https", port = 443, status = 302 }} }}

[[rules]]
name = "canary"
listeners = ["web"]
priority = 5
host = ["api.example.com", "*.api.example.com"]
path = ["/v2/*"]
method = ["GET", "POST"]
source_ip = ["10.0.0.0/8", "127.0.0.1/32"]
headers = {{ x-canary = ["1", "yes"] }}
query = {{ beta = ["on"] }}
forward = [{{ target_group = "g", weight = 9 }}, {{ target_group = "h", weight = 1 }}]

[[rules]]
name = "old"
listeners = ["web"]
priority = 7
path = ["/old/*"]
redirect = {{ path = "/new/", query = "", status = 301 }}

[[rules]]
name = "teapot"
listeners = ["web", "plain"]
priority = 9
path = ["/tea"]
fixed_response = {{ status = 418, body = "short and stout" }}

[[target_groups]]
name = "g"
protocol = "http1"
algorithm = "weighted_random"
slow_start = "30s"
deregistration_delay = "5s"
connect_timeout = "1s"
response_timeout = "20s"
retries = 2
targets = [{{ address = "{be}", weight = 3 }}, "127.0.0.1:9"]
health_check = {{ path = "/health", port = "traffic-port", interval = "10s", timeout = "2s", healthy_threshold = 3, unhealthy_threshold = 2, matcher = "200-299" }}

[[target_groups]]
name = "h"
algorithm = "least_outstanding_requests"
targets = ["{be}"]
tls = {{ verify = false, server_name = "backend.internal" }}
"#,
        be = be.addr
    );
    let lb = Lb::start(&cfg);
    let c = client();
    let shown: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/config")).await.body).unwrap();
    // Nothing is summarised: conditions, actions, weights, defaults of [server].
    let canary = &shown["rules"][0];
    assert_eq!(canary["headers"]["x-canary"], serde_json::json!(["1", "yes"]), "{shown}");
    assert_eq!(canary["source_ip"][0], "10.0.0.0/8");
    assert_eq!(canary["forward"][1], serde_json::json!({"target_group": "h", "weight": 1}));
    assert_eq!(shown["rules"][1]["redirect"], serde_json::json!({"path": "/new/", "query": "", "status": 301}));
    assert_eq!(shown["rules"][2]["fixed_response"]["body"], "short and stout");
    assert_eq!(shown["listeners"][0]["default_action"]["fixed_response"]["content_type"], "application/json");
    assert_eq!(shown["listeners"][1]["default_action"]["redirect"]["protocol"], "https");
    assert_eq!(
        shown["target_groups"][0]["targets"][0],
        serde_json::json!({"address": be.addr.to_string(), "weight": 3})
    );
    assert_eq!(shown["target_groups"][0]["health_check"]["matcher"], "200-299");
    assert_eq!(shown["target_groups"][1]["tls"]["server_name"], "backend.internal");
    assert_eq!(shown["server"]["idle_timeout"], "45s");
    assert_eq!(shown["server"]["header_read_timeout"], "10s", "defaults in force are shown");

    // Enough to rebuild the file: as TOML it reloads, and shows the same again.
    let mut rebuilt = shown.clone();
    rebuilt.as_object_mut().unwrap().remove("generation");
    let source = rebuilt.as_object_mut().unwrap().remove("source").unwrap();
    assert_eq!(source["location"], "test.toml", "the source is shown: {source}");
    let text = to_toml(&rebuilt);
    let out = lb.server.control().reload_text("rebuilt.toml", &text);
    assert!(out.ok(), "{:?}\n{text}", out.errors);
    let again: serde_json::Value = serde_json::from_str(&get(&c, &lb.admin("/config")).await.body).unwrap();
    assert_eq!(again["generation"], 2);
    rebuilt["generation"] = again["generation"].clone();
    rebuilt["source"] = serde_json::json!({"location": "rebuilt.toml", "version": null});
    assert_eq!(again, rebuilt);
}

/// A configuration as TOML: top-level tables as `[section]` / `[[array]]`, everything under them
/// as inline values (JSON's string escapes are TOML's).
fn to_toml(v: &serde_json::Value) -> String {
    fn inline(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
            serde_json::Value::Object(m) => {
                format!(
                    "{{ {} }}",
                    m.iter().map(|(k, v)| format!("{k:?} = {}", inline(v))).collect::<Vec<_>>().join(", ")
                )
            }
            other => other.to_string(),
        }
    }
    let table = |out: &mut String, header: String, m: &serde_json::Map<String, serde_json::Value>| {
        out.push_str(&header);
        for (k, v) in m {
            out.push_str(&format!("{k:?} = {}\n", inline(v)));
        }
    };
    let mut out = String::new();
    for (k, v) in v.as_object().unwrap() {
        match v {
            serde_json::Value::Object(m) => table(&mut out, format!("\n[{k}]\n"), m),
            serde_json::Value::Array(a) if !a.is_empty() && a.iter().all(|e| e.is_object()) => {
                for e in a {
                    table(&mut out, format!("\n[[{k}]]\n"), e.as_object().unwrap());
                }
            }
            other => out.insert_str(0, &format!("{k} = {}\n", inline(other))),
        }
    }
    out
}
