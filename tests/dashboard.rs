//! The dashboard at `GET /` of the admin API, in a real headless browser (chromium through the
//! DevTools protocol): with an admin token the page loads without it and asks for it; it renders
//! the listeners, rules and both target groups with their targets; a backend stopped is shown
//! unhealthy without reloading the page; a header condition holding `<script>` is text; a lost
//! connection is said. The same run writes the screenshot (`make screenshot` keeps it in docs/).
//! Also: `/stats` answers its documented fields, and every metric the Grafana and CloudWatch
//! dashboards in deploy/ query exists.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::browser::Browser;
use common::*;

const TOKEN: &str = "dashboard-token-0123";

/// A certificate for the https listener (its expiry is on the page) and the admin token's file,
/// written once per process (the tests run side by side).
fn files() -> &'static (String, String, String) {
    static FILES: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pilotfish-dashboard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = common::tls::Ca::new("dashboard CA");
        let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(60);
        let (cert, key) = ca.issue_until(&["shop.example.com"], &common::tls::ECDSA, not_after).write(&dir, "shop");
        let token = dir.join("admin-token");
        std::fs::write(&token, TOKEN).unwrap();
        (cert, key, token.display().to_string())
    })
}

/// The admin token line of [`config`], which the tests without a token take out.
fn token_line() -> String {
    format!("admin_token = {{ file = \"{}\" }}\n", files().2)
}

fn config(a: &Backend, b: &Backend) -> String {
    let (cert, key, _) = files();
    let token = token_line();
    format!(
        r#"
[server]
admin_bind = "127.0.0.1:0"
{token}
[[certificates]]
name = "shop"
cert = "{cert}"
key = "{key}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = "web" }}

[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
protocol = "https"
certificates = ["shop"]
default_action = {{ forward = "web" }}

[[rules]]
name = "api"
listeners = ["web", "secure"]
priority = 10
path = ["/api/*"]
forward = "api"

[[rules]]
name = "tagged"
listeners = ["web"]
priority = 20
headers = {{ "x-test" = ["<script>alert(1)</script>", "<img src=x onerror=\"window.__pwned=1\">"] }}
fixed_response = {{ status = 200, body = "tagged" }}

[[target_groups]]
name = "web"
targets = ["{}"]
health_check = {{ path = "/health", interval = "500ms", timeout = "400ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[target_groups]]
name = "api"
targets = ["{}"]
health_check = {{ path = "/health", interval = "500ms", timeout = "400ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
"#,
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_in_a_browser_and_escapes_what_it_shows() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&config(&a, &b));
    for (g, t) in [("web", a.addr), ("api", b.addr)] {
        let healthy = poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
            let v: serde_json::Value =
                serde_json::from_str(&admin_get(lb.server.admin_addr(), "/targets", Some(TOKEN)).await.body).unwrap();
            v["target_groups"].as_array().unwrap().iter().any(|x| {
                x["name"] == g
                    && x["targets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|y| y["address"] == t.to_string() && y["state"] == "healthy")
            })
        })
        .await;
        assert!(healthy, "{g} healthy");
    }

    // The page and its files need no token and come with their protections; the data does.
    for (path, ctype) in [("/", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")] {
        let got = admin_get(lb.server.admin_addr(), path, None).await;
        assert_eq!(got.status.as_u16(), 200, "{path}");
        assert!(got.header("content-type").unwrap().starts_with(ctype), "{path}");
        let csp = got.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(got.header("x-frame-options"), Some("DENY"));
    }
    let page = admin_get(lb.server.admin_addr(), "/", None).await.body;
    assert!(!page.contains("<script>") && page.matches("<script").count() == 1, "one external script, nothing inline");
    assert_eq!(admin_get(lb.server.admin_addr(), "/stats", None).await.status.as_u16(), 401);

    // Traffic for the charts: a few intervals of it.
    let url = lb.url("web", "/");
    let api = lb.url("web", "/api/x");
    let traffic = tokio::spawn(async move {
        let c = client();
        for _ in 0..600 {
            get(&c, &url).await;
            get(&c, &api).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let Some(mut page) = Browser::open("dash", &lb.admin("/"), 1280, 940).await else { return };
    // Asked for the token, then given it through the form.
    assert!(
        page.wait_for("document.getElementById('auth')?.hidden === false", Duration::from_secs(15)).await,
        "the page asks for the admin token"
    );
    page.eval(&format!(
        "(() => {{ const i = document.getElementById('auth-token'); i.value = '{TOKEN}'; \
         i.form.querySelector('button[type=submit]').click(); return true; }})()"
    ))
    .await;
    assert!(
        page.wait_for("!!document.querySelector('[data-loaded=\"true\"]')", Duration::from_secs(15)).await,
        "rendered"
    );

    // Both groups, each target with its state; the rules in order; the escaped header value.
    let groups =
        page.eval("[...document.querySelectorAll('[data-group]')].map(e => e.getAttribute('data-group'))").await;
    let groups: BTreeSet<String> = serde_json::from_value(groups).unwrap();
    assert_eq!(groups, ["api".to_string(), "web".to_string()].into());
    for t in [a.addr, b.addr] {
        let state = format!("(document.querySelector('[data-target=\"{t}\"]') || {{}}).getAttribute?.('data-state')");
        assert_eq!(page.eval(&state).await, "healthy", "{t}");
    }
    let text = page.eval("document.body.innerText").await.as_str().unwrap().to_string();
    assert!(text.contains("<script>alert(1)</script>"), "the header value is shown as text:\n{text}");
    assert!(text.contains("<img src=x onerror=\"window.__pwned=1\">"), "{text}");
    assert!(text.contains("tagged") && text.contains("forward api") && text.contains("fixed response 200"), "{text}");
    assert_eq!(page.eval("document.querySelectorAll('script').length").await, 1, "nothing injected");
    assert_eq!(
        page.eval("document.querySelectorAll('img[src=x]').length === 0 && !window.__pwned").await,
        true,
        "no markup from data"
    );

    // Charts have points: wait for a few intervals of history, then keep the picture.
    let history = poll_until(Duration::from_secs(40), Duration::from_millis(500), || async {
        let stats: serde_json::Value =
            serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", Some(TOKEN)).await.body).unwrap();
        let web = stats["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == "web").cloned().unwrap();
        let rps = web["series"]["requests_per_second"].as_array().cloned().unwrap_or_default();
        let p99 = web["series"]["p99_ms"].as_array().cloned().unwrap_or_default();
        rps.iter().filter(|v| v.as_f64().unwrap_or(0.0) > 0.0).count() >= 3 && p99.iter().any(|v| v.as_f64().is_some())
    })
    .await;
    assert!(history, "the web group's series fills with traffic");
    let drawn = "[...document.querySelectorAll('[data-group=\"web\"] path.spark-line')].filter(p => (p.getAttribute('d').match(/L/g) || []).length >= 2).length >= 2";
    assert!(page.wait_for(drawn, Duration::from_secs(10)).await, "charts drawn");
    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot");
    let out = std::env::var_os("PILOTFISH_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    std::fs::write(&out, &png).unwrap();
    eprintln!("dashboard screenshot: {}", out.display());
    // The reload button posts /reload with the token and shows the answer (this process was
    // started from text: nothing to reload, said as a failure).
    page.eval("document.getElementById('reload-button').click()").await;
    assert!(
        page.wait_for(
            "(document.getElementById('reload-status')?.innerText || '').includes('nothing to reload')",
            Duration::from_secs(10)
        )
        .await,
        "the reload's answer is shown: {}",
        page.eval("document.getElementById('reload-status')?.innerText").await
    );

    // A backend stops: the same page shows it unhealthy, no reload.
    let marker = page.eval("(window.__same_page = 42)").await;
    assert_eq!(marker, 42);
    b.kill();
    let unhealthy =
        format!("document.querySelector('[data-target=\"{}\"]')?.getAttribute('data-state') === 'unhealthy'", b.addr);
    assert!(page.wait_for(&unhealthy, Duration::from_secs(20)).await, "shown unhealthy");
    assert_eq!(page.eval("window.__same_page").await, 42, "without reloading the page");

    traffic.abort();

    // Draining (SIGTERM's first step): said at once, while the admin port still answers.
    lb.server.control().state.set_draining();
    assert!(
        page.wait_for("document.getElementById('banner')?.classList.contains('draining') && !document.getElementById('banner').hidden", Duration::from_secs(10)).await,
        "draining is shown"
    );

    // The balancer goes away: the page says the connection is lost and keeps what it showed.
    drop(lb);
    assert!(
        page.wait_for("document.getElementById('banner')?.classList.contains('lost') && !document.getElementById('banner').hidden", Duration::from_secs(15)).await,
        "connection lost is shown"
    );
    assert!(page.eval("document.querySelectorAll('[data-group]').length").await.as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answers_its_documented_fields() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&config(&a, &b).replace(&token_line(), ""));
    get(&client(), &lb.url("web", "/api/one")).await;
    let s: serde_json::Value =
        serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", None).await.body).unwrap();
    for key in [
        "version",
        "now",
        "state",
        "generation",
        "interval_seconds",
        "window_seconds",
        "listeners",
        "target_groups",
        "reloads",
        "last_reload_error",
    ] {
        assert!(s.get(key).is_some(), "{key} in {s}");
    }
    let secure = s["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "secure").unwrap();
    assert_eq!(secure["protocol"], "https");
    assert_eq!(secure["certificates"][0]["name"], "shop");
    let days = secure["certificates"][0]["days_left"].as_f64().unwrap();
    assert!((59.0..=60.0).contains(&days), "{days}");
    let l = &s["listeners"][0];
    assert_eq!(l["name"], "web");
    assert_eq!(l["bind"], lb.addr("web").to_string());
    assert_eq!(l["default_action"], "forward web");
    let rules: Vec<&str> = l["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(rules, ["api", "tagged"], "priority order");
    assert_eq!(
        l["rules"][1]["conditions"][0],
        serde_json::json!({ "kind": "header x-test", "values": ["<script>alert(1)</script>", "<img src=x onerror=\"window.__pwned=1\">"] })
    );
    assert_eq!(l["rules"][1]["action"], "fixed response 200");
    let g = s["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == "api").unwrap();
    assert_eq!(g["source"], "static");
    assert_eq!(g["targets"][0]["address"], b.addr.to_string());
    for k in ["time", "requests_per_second", "error_rate", "p50_ms", "p99_ms"] {
        assert!(g["series"][k].is_array(), "{k}");
    }

    // Every other request answered 500 by the target: an interval's error rate is about half,
    // and its requests per second count them all.
    let c = client();
    assert!(wait_state(&lb, "api", b.addr, "healthy", Duration::from_secs(10)).await);
    for i in 0..40 {
        let status = if i % 2 == 0 { "200" } else { "500" };
        let req = http::Request::get(lb.url("web", "/api/e")).header("x-status", status).body(Default::default());
        let got = send(&c, req.unwrap()).await;
        assert_eq!(got.status.as_str(), status, "{}", got.body);
    }
    let halved = poll_until(Duration::from_secs(20), Duration::from_millis(250), || async {
        let s: serde_json::Value =
            serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", None).await.body).unwrap();
        let g = s["target_groups"].as_array().unwrap().iter().find(|g| g["name"] == "api").unwrap().clone();
        let (rates, rps) = (
            g["series"]["error_rate"].as_array().unwrap().clone(),
            g["series"]["requests_per_second"].as_array().unwrap().clone(),
        );
        rates
            .iter()
            .zip(&rps)
            .any(|(e, r)| e.as_f64().is_some_and(|e| (0.4..=0.6).contains(&e)) && r.as_f64().unwrap_or(0.0) >= 1.0)
    })
    .await;
    let s: serde_json::Value =
        serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", None).await.body).unwrap();
    assert!(halved, "a point with half its requests answered 500: {}", s["target_groups"]);

    // A failed reload is in the history, with its error; a good one after it clears the error.
    let out = lb.server.control().reload_text("test.toml", "[[listeners]]\nname = 1\n");
    assert!(!out.ok());
    let s: serde_json::Value =
        serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", None).await.body).unwrap();
    let last = s["reloads"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "failure", "{s}");
    assert!(s["last_reload_error"].as_str().unwrap().contains("test.toml:"), "{s}");
    let good = config(&a, &b).replace(&token_line(), "");
    assert!(lb.server.control().reload_text("test.toml", &good).ok());
    let s: serde_json::Value =
        serde_json::from_str(&admin_get(lb.server.admin_addr(), "/stats", None).await.body).unwrap();
    assert_eq!(s["reloads"].as_array().unwrap().last().unwrap()["result"], "success");
    assert!(s["last_reload_error"].is_null(), "{s}");
    assert_eq!(s["generation"], 2);

    // Only this balancer's own names reach it: a rebinding page's Host, a cross-site reload.
    let rebound = send(
        &c,
        http::Request::get(lb.admin("/stats")).header("host", "evil.example:9901").body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(rebound.status.as_u16(), 421, "{}", rebound.body);
    let cross = http::Request::post(lb.admin("/reload"))
        .header("origin", "https://evil.example")
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&c, cross).await.status.as_u16(), 403);
    let cross = http::Request::post(lb.admin("/reload"))
        .header("sec-fetch-site", "cross-site")
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&c, cross).await.status.as_u16(), 403);
    for host in ["localhost", "127.0.0.1:9901", "[::1]:9901"] {
        let ok =
            send(&c, http::Request::get(lb.admin("/healthz")).header("host", host).body(Default::default()).unwrap())
                .await;
        assert_eq!(ok.status.as_u16(), 200, "{host}");
    }
}

/// Every `pilotfish_*` name deploy/grafana-dashboard.json queries is in `/metrics` (the
/// CloudWatch dashboard is checked against what the publisher sent, in tests/autoscaling.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&config(&a, &b).replace(&token_line(), ""));
    get(&client(), &lb.url("web", "/")).await;
    let metrics = admin_get(lb.server.admin_addr(), "/metrics", None).await.body;
    let families: BTreeSet<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();

    let grafana = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&grafana).expect("grafana-dashboard.json is JSON");
    let re = regex::Regex::new(r"pilotfish_[a-z0-9_]+").unwrap();
    let used: BTreeSet<&str> = re.find_iter(&grafana).map(|m| m.as_str()).collect();
    assert!(used.len() >= 6, "{used:?}");
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| families.contains(f))
            .unwrap_or(name);
        assert!(families.contains(family), "{name} (grafana-dashboard.json) is not in /metrics: {families:?}");
    }

    // The CloudWatch dashboard's names are checked against what moto received: tests/autoscaling.rs.
}
