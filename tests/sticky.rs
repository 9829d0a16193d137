//! Sticky sessions through a real listener with real backends, for HTTP/1.1 and HTTP/2
//! clients: `lb_cookie` keeps a client on one target, a tampered, expired or foreign-key cookie
//! is ignored and replaced, an unhealthy sticky target is replaced, two balancers that share
//! `cookie_key` honour each other's cookies (and with different keys do not), `app_cookie`
//! follows the application's cookie, and a weighted forward's stickiness keeps a client on one
//! group.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// Three backends named b0, b1, b2.
async fn backends() -> Vec<Backend> {
    vec![Backend::start("b0").await, Backend::start("b1").await, Backend::start("b2").await]
}

fn group(name: &str, b: &[Backend], extra: &str) -> String {
    let targets: Vec<String> = b.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[[target_groups]]\nname = \"{name}\"\ntargets = [{}]\n{extra}\n", targets.join(", "))
}

fn config(server: &str, groups: &str, forward: &str) -> String {
    format!(
        r#"[server]
{server}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_action = {{ forward = {forward} }}

{groups}
"#
    )
}

/// The `name=value` parts of a response's `Set-Cookie` fields whose name starts with `prefix`.
fn cookies(got: &Got, prefix: &str) -> Vec<String> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|c| c.starts_with(prefix))
        .collect()
}

fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

async fn with_cookie(c: &HttpClient, lb: &Lb, cookie: &str) -> Got {
    get_with(c, &lb.url("web", "/"), &[("cookie", cookie)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lb_cookie_keeps_a_client_on_one_target_and_a_bad_one_is_replaced() {
    let b = backends().await;
    let lb =
        Lb::start(&config("", &group("g", &b, "stickiness = { type = \"lb_cookie\", duration = \"1h\" }"), "\"g\""));
    for c in [client(), h2c_client()] {
        let first = get(&c, &lb.url("web", "/")).await;
        let issued = cookies(&first, "PILOTFISH");
        assert_eq!(issued.len(), 2, "the cookie and its CORS twin: {:?}", first.headers);
        let main = issued.iter().find(|c| c.starts_with("PILOTFISH-")).unwrap();
        let cors = issued.iter().find(|c| c.starts_with("PILOTFISHCORS-")).unwrap();
        assert!(main.ends_with("; Max-Age=3600; Path=/; HttpOnly"), "{main}");
        assert!(cors.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=None; Secure"), "{cors}");
        // 50 requests with the cookie (or its twin, as a cross-site request sends it) land on
        // the target that served the first one; a fresh cookie is not issued again.
        let mut seen = HashSet::new();
        for i in 0..50 {
            let sent = if i % 2 == 0 { pair(main) } else { format!("other=1; {}", pair(cors)) };
            let got = with_cookie(&c, &lb, &sent).await;
            seen.insert(got.body.clone());
            assert!(cookies(&got, "PILOTFISH").is_empty(), "not re-issued while fresh");
        }
        assert_eq!(seen, HashSet::from([first.body.clone()]), "every request on one target");
        // Without the cookie, the group balances: more than one target answers.
        let mut spread = HashSet::new();
        for _ in 0..6 {
            spread.insert(get(&c, &lb.url("web", "/")).await.body);
        }
        assert!(spread.len() > 1, "round robin without the cookie: {spread:?}");
        // A tampered cookie (one character changed) is ignored and replaced, never an error.
        let p = pair(main);
        let (name, value) = p.split_once('=').unwrap();
        let mut v: Vec<char> = value.chars().collect();
        let mid = v.len() / 2;
        v[mid] = if v[mid] == 'A' { 'B' } else { 'A' };
        let tampered = format!("{name}={}", v.iter().collect::<String>());
        for bad in [tampered, format!("{name}=not-base64-at-all!"), format!("{name}=")] {
            let got = with_cookie(&c, &lb, &bad).await;
            assert_eq!(got.status, 200, "{bad}");
            assert_eq!(cookies(&got, "PILOTFISH-").len(), 1, "a bad cookie is replaced: {bad}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cookie_and_an_unhealthy_sticky_target_are_replaced() {
    let b = backends().await;
    let hc = "[target_groups.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let short = group("short", &b, "stickiness = { type = \"lb_cookie\", duration = \"1s\" }");
    let long = group("long", &b, &format!("stickiness = {{ type = \"lb_cookie\", duration = \"1h\" }}\n{hc}"));
    let text = format!(
        "{}\n[[rules]]\nname = \"long\"\nlisteners = [\"web\"]\npriority = 1\npath = [\"/long\"]\nforward = \"long\"\n",
        config("", &format!("{short}\n{long}"), "\"short\"")
    );
    let lb = Lb::start(&text);
    let c = client();
    // Expiry: a 1s cookie stops holding once it is past; the requests are balanced again.
    let first = get(&c, &lb.url("web", "/")).await;
    let cookie = pair(&cookies(&first, "PILOTFISH-")[0]);
    let expired = poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        with_cookie(&c, &lb, &cookie).await.body != first.body
    })
    .await;
    assert!(expired, "the expired cookie still held");

    // Health: wait until every target of "long" takes traffic, then take the sticky one down.
    let healthy = poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        let t = get(&c, &lb.admin("/targets")).await.body;
        t.matches("\"healthy\"").count() >= 6
    })
    .await;
    assert!(healthy, "targets became healthy");
    let got = get(&c, &lb.url("web", "/long")).await;
    let cookie = pair(&cookies(&got, "PILOTFISH-")[0]);
    let sticky = b.iter().find(|x| x.name == got.body).unwrap();
    sticky.set_health(500);
    let replaced = poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        get_with(&c, &lb.url("web", "/long"), &[("cookie", &cookie)]).await.body != sticky.name
    })
    .await;
    assert!(replaced, "an unhealthy sticky target is replaced");
    let moved = get_with(&c, &lb.url("web", "/long"), &[("cookie", &cookie)]).await;
    let new_cookie = cookies(&moved, "PILOTFISH-");
    assert_eq!(new_cookie.len(), 1, "the cookie is re-issued for the new target");
    for _ in 0..10 {
        let got = get_with(&c, &lb.url("web", "/long"), &[("cookie", &pair(&new_cookie[0]))]).await;
        assert_eq!(got.body, moved.body, "the new session holds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_that_share_cookie_key_share_sessions() {
    let b = backends().await;
    std::env::set_var("PF_STICKY_KEY_A", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=");
    std::env::set_var("PF_STICKY_KEY_B", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=");
    let g = group("g", &b, "stickiness = { type = \"lb_cookie\" }");
    let one = Lb::start(&config("cookie_key = { env = \"PF_STICKY_KEY_A\" }", &g, "\"g\""));
    let two = Lb::start(&config("cookie_key = { env = \"PF_STICKY_KEY_A\" }", &g, "\"g\""));
    let other = Lb::start(&config("cookie_key = { env = \"PF_STICKY_KEY_B\" }", &g, "\"g\""));
    let c = client();
    for _ in 0..3 {
        let first = get(&c, &one.url("web", "/")).await;
        let cookie = pair(&cookies(&first, "PILOTFISH-")[0]);
        for _ in 0..10 {
            let got = with_cookie(&c, &two, &cookie).await;
            assert_eq!(got.body, first.body, "the same key: the other replica's cookie holds");
            assert!(cookies(&got, "PILOTFISH-").is_empty());
        }
        // A different key: the cookie does not open; it is replaced.
        let got = with_cookie(&c, &other, &cookie).await;
        assert_eq!(cookies(&got, "PILOTFISH-").len(), 1, "a foreign key's cookie is replaced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cookie_session_follows_the_applications_cookie() {
    let b = backends().await;
    let g = group("g", &b, "stickiness = { type = \"app_cookie\", cookie_name = \"SESSIONID\", duration = \"1h\" }");
    let lb = Lb::start(&config("", &g, "\"g\""));
    for c in [client(), h2c_client()] {
        // No application cookie set: nothing issued.
        let plain = get(&c, &lb.url("web", "/")).await;
        assert!(cookies(&plain, "PILOTFISH").is_empty(), "{:?}", plain.headers);
        // The application sets SESSIONID: pilotfish maps it to the target in its own cookie.
        let login = get_with(&c, &lb.url("web", "/"), &[("x-reply-header", "set-cookie=SESSIONID=abc; Path=/")]).await;
        let ours = cookies(&login, "PILOTFISHAPP-");
        assert_eq!(ours.len(), 1, "{:?}", login.headers);
        assert!(cookies(&login, "SESSIONID=abc").len() == 1, "the application's cookie is relayed");
        let both = format!("SESSIONID=abc; {}", pair(&ours[0]));
        for _ in 0..20 {
            assert_eq!(with_cookie(&c, &lb, &both).await.body, login.body, "the session holds");
        }
        // Without the application's cookie, the session is over: balanced again.
        let mut spread = HashSet::new();
        for _ in 0..6 {
            spread.insert(with_cookie(&c, &lb, &pair(&ours[0])).await.body);
        }
        assert!(spread.len() > 1, "{spread:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_forward_keeps_a_client_on_one_group() {
    let (blue, green) = ([Backend::start("blue").await], [Backend::start("green").await]);
    let groups = format!("{}{}", group("blue", &blue, ""), group("green", &green, ""));
    let forward = r#"{ target_groups = [{ target_group = "blue", weight = 50 }, { target_group = "green", weight = 50 }], stickiness = "1h" }"#;
    let lb = Lb::start(&config("", &groups, forward));
    for c in [client(), h2c_client()] {
        for _ in 0..4 {
            let first = get(&c, &lb.url("web", "/")).await;
            let issued = cookies(&first, "PILOTFISHTG-");
            assert_eq!(issued.len(), 1, "{:?}", first.headers);
            for _ in 0..15 {
                let got = with_cookie(&c, &lb, &pair(&issued[0])).await;
                assert_eq!(got.body, first.body, "the client stays on its group");
                assert!(cookies(&got, "PILOTFISHTG-").is_empty());
            }
        }
        // New clients still split by weight (20 draws at 50/50 all alike: 1 in 500,000).
        let mut more = HashSet::new();
        for _ in 0..20 {
            more.insert(get(&c, &lb.url("web", "/")).await.body);
        }
        assert_eq!(more.len(), 2, "{more:?}");
    }
}
