//! `pilotfish import copilot` as users run it: the real binary on the Copilot manifests under
//! tests/import/ (a frontend at `/`, an API with additional rules and a `prod` override, a docs
//! site behind an nginx sidecar, a Backend Service to skip, broken ones to refuse). The printed
//! TOML is parsed and compared field by field with what each manifest says, the comments for the
//! fields not mapped are checked against stderr, and every configuration made passes
//! `pilotfish check` (the binary, and the same load + compile in-process).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::aws::{aws_env, Moto};
use pilotfish::server::ConfigSource;

const BIN: &str = env!("CARGO_BIN_EXE_pilotfish");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(case: &str) -> String {
    format!("tests/import/{case}/manifest.yml")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilotfish-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `pilotfish import copilot ARGS` in `dir`, with no AWS region in the environment (what it
/// prints must not depend on the caller's).
fn import_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["import", "copilot"])
        .args(args)
        .current_dir(dir)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap()
}

fn import(args: &[&str]) -> Output {
    import_in(root(), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The import succeeded: its configuration (stdout) and its report (stderr).
fn imported(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    (stdout, stderr)
}

fn parse(toml_text: &str) -> toml::Value {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("the output is not TOML: {e}\n{toml_text}"))
}

/// The element of `[[kind]]` named `name`.
fn named<'a>(cfg: &'a toml::Value, kind: &str, name: &str) -> &'a toml::Value {
    cfg.get(kind)
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name)))
        .unwrap_or_else(|| panic!("no {kind} named {name:?}"))
}

fn names(cfg: &toml::Value, kind: &str) -> Vec<String> {
    cfg.get(kind)
        .and_then(|v| v.as_array())
        .map_or_else(Vec::new, |a| a.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect())
}

/// Compares one element key by key with `want` (a TOML table): every key of each, every value.
fn assert_element(cfg: &toml::Value, kind: &str, name: &str, want: &str) {
    let got = named(cfg, kind, name).as_table().unwrap();
    let mut want: toml::Table = toml::from_str(want).unwrap();
    want.insert("name".into(), toml::Value::String(name.into()));
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for k in keys {
        assert_eq!(got.get(k), want.get(k), "{kind} {name:?}: key {k:?}");
    }
}

/// `pilotfish check --config PATH` (the binary) exits 0.
fn check_binary(path: &Path, env: &[(&str, &str)]) -> String {
    let mut c = Command::new(BIN);
    c.arg("check").arg("--config").arg(path).env_remove("AWS_REGION");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "pilotfish check {}:\n{said}", path.display());
    said
}

/// What `check` does, in-process: load (nothing to fetch here) and compile, no error.
fn check_in_process(text: &str) {
    let metrics = pilotfish::telemetry::metrics::Metrics::default();
    let source = ConfigSource::Text { name: "imported.toml".into(), text: text.into() };
    let (doc, material, _) = pilotfish::server::load(&source, &metrics).unwrap_or_else(|d| panic!("{d}"));
    let input = pilotfish::config::CompileInput {
        name: &doc.name,
        text: &doc.text,
        previous: None,
        metrics: &metrics,
        generation: 1,
        base_dir: None,
        material: &material,
    };
    if let Err(d) = pilotfish::config::compile(input) {
        panic!("the imported configuration does not compile:\n{d}\n{text}");
    }
}

/// Both checks on a configuration that needs no AWS to check.
fn passes_check(name: &str, toml_text: &str) {
    check_in_process(toml_text);
    let path = tmp(name).join("pilotfish.toml");
    std::fs::write(&path, toml_text).unwrap();
    let said = check_binary(&path, &[]);
    assert!(said.contains("OK"), "{said}");
}

/// The `# <svc>: not mapped: <field>: <reason>` comments, as (svc, field) pairs; each must
/// also be on stderr as `<file>: not mapped: <field>: <reason>`.
fn unmapped(stdout: &str, stderr: &str, files: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("# ") else { continue };
        let Some((svc, rest)) = rest.split_once(": not mapped: ") else { continue };
        let (field, reason) = rest.split_once(": ").unwrap();
        assert!(!reason.is_empty(), "{line}");
        let file = files.iter().find(|(s, _)| *s == svc).map(|(_, f)| *f).unwrap();
        let want = format!("{file}: not mapped: {field}: {reason}");
        assert!(stderr.lines().any(|l| l == want), "stderr lacks {want:?}:\n{stderr}");
        out.insert((svc.to_owned(), field.to_owned()));
    }
    let on_stderr = stderr.lines().filter(|l| l.contains(": not mapped: ")).count();
    assert_eq!(on_stderr, out.len(), "stderr lists what the comments list:\n{stderr}");
    out
}

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

const FILES: [(&str, &str); 3] = [
    ("frontend", "tests/import/frontend/manifest.yml"),
    ("api", "tests/import/api/manifest.yml"),
    ("docs", "tests/import/docs/manifest.yml"),
];

#[test]
fn three_services_map_field_by_field_and_the_backend_service_is_skipped() {
    let (f, a, d, w) = (manifest("frontend"), manifest("api"), manifest("docs"), manifest("worker"));
    let out = import(&["--app", "shop", "--env", "test", &f, &a, &d, &w]);
    let (stdout, stderr) = imported(&out);
    let cfg = parse(&stdout);

    // No certificate: one http listener on the task definition's port, no [aws] (no --region).
    assert_eq!(names(&cfg, "listeners"), ["http"]);
    assert_element(&cfg, "listeners", "http", r#"bind = "0.0.0.0:8080""#);
    assert!(cfg.get("aws").is_none() && cfg.get("certificates").is_none() && cfg.get("cloudwatch").is_none());
    assert!(stdout.contains("# No https listener: pass --certificate-arn ARN"), "{stdout}");

    // Specificity order: /api/admin, /api/v2 (two segments, longer first), /docs, /api, then /.
    assert_eq!(names(&cfg, "rules"), ["api-2", "api-1", "docs", "api", "frontend"]);
    assert_element(
        &cfg,
        "rules",
        "api-2",
        r#"listeners = ["http"]
priority = 10
path = ["/api/admin", "/api/admin/*"]
source_ip = ["10.0.0.0/8"]
forward = "api""#, // same target and settings as the service's own rule: its group
    );
    assert_element(
        &cfg,
        "rules",
        "api-1",
        r#"listeners = ["http"]
priority = 20
host = ["api.example.com", "v2.api.example.com"]
path = ["/api/v2", "/api/v2/*"]
forward = "api-1""#,
    );
    assert_element(
        &cfg,
        "rules",
        "docs",
        r#"listeners = ["http"]
priority = 30
path = ["/docs", "/docs/*"]
forward = "docs""#,
    );
    assert_element(
        &cfg,
        "rules",
        "api",
        r#"listeners = ["http"]
priority = 40
host = ["api.example.com"]
path = ["/api", "/api/*"]
source_ip = ["203.0.113.0/24", "198.51.100.7/32"]
forward = "api""#,
    );
    // The root with aliases: a rule without a path, last; the listener keeps its 404 default.
    assert_element(
        &cfg,
        "rules",
        "frontend",
        r#"listeners = ["http"]
priority = 50
host = ["www.example.com", "example.com"]
forward = "frontend""#,
    );
    assert!(named(&cfg, "listeners", "http").get("default_action").is_none());

    assert_eq!(names(&cfg, "target_groups"), ["frontend", "api", "api-1", "docs"]);
    assert_element(
        &cfg,
        "target_groups",
        "frontend",
        r#"protocol = "http1"
deregistration_delay = "1m"
stickiness = { type = "lb_cookie" }
health_check = { path = "/_healthcheck", port = 8080, interval = "15s", timeout = "10s", healthy_threshold = 3, unhealthy_threshold = 4, matcher = "200,301" }
discovery = { cloud_map = { namespace = "test.shop.local", service = "frontend", port = 8080 } }"#,
    );
    assert_element(
        &cfg,
        "target_groups",
        "api",
        r#"protocol = "http2"
deregistration_delay = "30s"
health_check = { path = "/health" }
discovery = { cloud_map = { namespace = "test.shop.local", service = "api", port = 8080 } }"#,
    );
    // version: grpc on HTTP/2; target_port 9090 of the same service; its own delay.
    assert_element(
        &cfg,
        "target_groups",
        "api-1",
        r#"protocol = "http2"
deregistration_delay = "10s"
health_check = { path = "/grpc.health.v1.Health/Check" }
discovery = { cloud_map = { namespace = "test.shop.local", service = "api", port = 9090 } }"#,
    );
    // target_container: the nginx sidecar, at its port (not image.port 3000); a string healthcheck.
    assert_element(
        &cfg,
        "target_groups",
        "docs",
        r#"protocol = "http1"
deregistration_delay = "1m"
health_check = { path = "/docs/healthz" }
discovery = { cloud_map = { namespace = "test.shop.local", service = "docs", port = 80 } }"#,
    );

    let got = unmapped(&stdout, &stderr, &FILES);
    let want = pairs(&[
        ("frontend", "image.build (\"frontend/Dockerfile\")"),
        ("frontend", "http.alias[0].hosted_zone (\"Z0873220N255IR3MTNR4\")"),
        ("frontend", "http.healthcheck.grace_period (\"45s\")"),
        ("frontend", "http.redirect_to_https (true)"),
        ("frontend", "count (2)"),
        ("frontend", "cpu (256)"),
        ("frontend", "memory (512)"),
        ("frontend", "platform (\"linux/x86_64\")"),
        ("frontend", "exec (true)"),
        ("frontend", "network"),
        ("frontend", "variables"),
        ("frontend", "secrets"),
        ("api", "image.location"),
        ("api", "http.additional_rules[0].healthcheck.success_codes"),
        ("api", "count (1)"), // the test override replaces the autoscaling map by a number
        ("api", "cpu (512)"),
        ("api", "memory (1024)"),
        ("docs", "image.build (\"docs/Dockerfile\")"),
        ("docs", "sidecars"),
        ("docs", "nlb"),
        ("docs", "storage"),
        ("docs", "logging"),
        ("docs", "frobnicate (\"yes\")"),
    ]);
    assert_eq!(got, want);
    assert!(stdout.contains("# frontend: not mapped: count (2): the desired task count is ECS's"), "{stdout}");
    assert!(stdout.contains("# docs: not mapped: nlb: a Network Load Balancer: pilotfish is layer 7"), "{stdout}");
    assert!(
        stderr.contains(
            "tests/import/worker/manifest.yml: skipped: type: \"Backend Service\" is not a Load Balanced Web Service"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("#   tests/import/worker/manifest.yml: skipped:"), "{stdout}");
    assert!(stderr.contains("3 service(s), 5 rule(s), 4 target group(s); 23 field(s) not mapped"), "{stderr}");

    passes_check("test", &stdout);
}

#[test]
fn the_prod_override_and_autoscaling_written_to_a_file() {
    let dir = tmp("prod");
    let file = dir.join("edge.toml");
    let (f, a, d) = (manifest("frontend"), manifest("api"), manifest("docs"));
    let out = import(&[
        "--app",
        "shop",
        "--env",
        "prod",
        "--region",
        "eu-west-1",
        "--cluster",
        "shop-prod-Cluster-AbC",
        "--ecs-service",
        "api=shop-prod-api-Service-XyZ",
        "-o",
        file.to_str().unwrap(),
        &f,
        &a,
        &d,
    ]);
    let (stdout, stderr) = imported(&out);
    assert_eq!(stdout, "", "-o writes the file, not stdout");
    assert!(stderr.contains(&format!("written to {}", file.display())), "{stderr}");
    let written = std::fs::read_to_string(&file).unwrap();
    let cfg = parse(&written);

    assert_eq!(cfg["aws"]["region"].as_str(), Some("eu-west-1"));
    assert_eq!(cfg["cloudwatch"]["load_balancer"].as_str(), Some("shop-prod"), "autoscaling reads CloudWatch");
    assert_eq!(names(&cfg, "rules"), ["api-2", "api-1", "docs", "api", "frontend"]);
    // prod's aliases replace the base's lists.
    assert_eq!(
        named(&cfg, "rules", "frontend")["host"],
        toml::Value::from(vec!["www.example.com", "shop.example.com"])
    );
    assert_element(
        &cfg,
        "rules",
        "api",
        r#"listeners = ["http"]
priority = 40
host = ["api.shop.example.com"]
path = ["/api", "/api/*"]
source_ip = ["203.0.113.0/24", "198.51.100.7/32"]
forward = "api""#,
    );
    // The override changed the service's own group, so /api/admin no longer shares it.
    assert_eq!(named(&cfg, "rules", "api-2")["forward"].as_str(), Some("api-2"));
    assert_eq!(names(&cfg, "target_groups"), ["frontend", "api", "api-1", "api-2", "docs"]);
    assert_element(
        &cfg,
        "target_groups",
        "api",
        r#"protocol = "http2"
deregistration_delay = "1m"
health_check = { path = "/ready", interval = "10s", timeout = "5s" }
discovery = { cloud_map = { namespace = "prod.shop.local", service = "api", port = 8080 } }
autoscaling = { ecs = { cluster = "shop-prod-Cluster-AbC", service = "shop-prod-api-Service-XyZ" }, min = 2, max = 20, metric = "RequestCountPerTarget", target = 1000.0, scale_out_cooldown = "15s", scale_in_cooldown = "1m" }"#,
    );
    assert_element(
        &cfg,
        "target_groups",
        "api-2",
        r#"protocol = "http2"
deregistration_delay = "30s"
health_check = { path = "/health" }
discovery = { cloud_map = { namespace = "prod.shop.local", service = "api", port = 8080 } }"#,
    );

    let got = unmapped(&written, &stderr, &FILES);
    for want in [("frontend", "count (4)"), ("api", "count.range.spot_from (10)"), ("api", "count.cpu_percentage (70)")]
    {
        assert!(got.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {got:?}");
    }
    assert!(!got.iter().any(|(s, f)| s == "api" && f.starts_with("count.requests")), "requests is mapped");
    assert!(!stderr.contains("assumed"), "the ECS service was named: {stderr}");

    passes_check("prod", &written);
}

#[test]
fn ecs_discovery_needs_the_cluster_and_names_each_container() {
    let (a, d) = (manifest("api"), manifest("docs"));
    let out = import(&["--app", "shop", "--env", "test", "--discovery", "ecs", &a, &d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--discovery ecs needs --cluster NAME"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());

    let out =
        import(&["--app", "shop", "--env", "test", "--discovery", "ecs", "--cluster", "shop-test-Cluster-1", &a, &d]);
    let (stdout, stderr) = imported(&out);
    let cfg = parse(&stdout);
    let ecs = |g: &str| named(&cfg, "target_groups", g)["discovery"].clone();
    let want = |s: &str| -> toml::Value { toml::from_str(s).unwrap() };
    assert_eq!(
        ecs("docs"),
        want(
            r#"ecs = { cluster = "shop-test-Cluster-1", service = "docs", container_name = "nginx", container_port = 80 }"#
        )
    );
    assert_eq!(
        ecs("api-1"),
        want(
            r#"ecs = { cluster = "shop-test-Cluster-1", service = "api", container_name = "api", container_port = 9090 }"#
        )
    );
    // The ECS service names are CloudFormation's: the import says what it assumed.
    for svc in ["api", "docs"] {
        let file = manifest(svc);
        assert!(stderr.contains(&format!("{file}: assumed: --ecs-service: ECS service name \"{svc}\"")), "{stderr}");
    }
    passes_check("ecs", &stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acm_certificate_makes_the_https_listener_and_http_redirects() {
    let moto = Moto::start().await;
    aws_env();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto.endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let arn = aws_sdk_acm::Client::new(&sdk)
        .request_certificate()
        .domain_name("www.example.com")
        .options(
            aws_sdk_acm::types::CertificateOptions::builder()
                .export(aws_sdk_acm::types::CertificateExport::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .certificate_arn
        .unwrap();

    let (f, a) = (manifest("frontend"), manifest("api"));
    let out = import(&[
        "--app",
        "shop",
        "--env",
        "prod",
        "--certificate-arn",
        &arn,
        "--proxy-trusted",
        "10.0.0.0/24",
        "--proxy-trusted",
        "10.0.1.0/24",
        &f,
        &a,
    ]);
    let (stdout, stderr) = imported(&out);
    let cfg = parse(&stdout);
    assert_eq!(cfg["aws"]["region"].as_str(), Some("us-east-1"), "the certificate's region");
    for l in ["http", "https"] {
        assert_eq!(
            named(&cfg, "listeners", l)["proxy_protocol"]["trusted"],
            toml::Value::from(vec!["10.0.0.0/24", "10.0.1.0/24"]),
            "{l}: behind the NLB"
        );
    }
    assert_element(&cfg, "certificates", "acm-1", &format!("acm = {:?}", arn));
    assert_eq!(names(&cfg, "listeners"), ["http", "https"]);
    assert_element(
        &cfg,
        "listeners",
        "http",
        r#"bind = "0.0.0.0:8080"
proxy_protocol = { trusted = ["10.0.0.0/24", "10.0.1.0/24"] }
default_action = { redirect = { protocol = "https", port = 443, status = 301 } }"#,
    );
    assert_element(
        &cfg,
        "listeners",
        "https",
        r#"bind = "0.0.0.0:8443"
protocol = "https"
certificates = ["acm-1"]
proxy_protocol = { trusted = ["10.0.0.0/24", "10.0.1.0/24"] }"#,
    );
    // redirect_to_https is Copilot's default: frontend (true) and api (unset) are on https only,
    // and so is api-1, which inherits it; api-2 says false: on both.
    for r in ["frontend", "api", "api-1"] {
        assert_eq!(named(&cfg, "rules", r)["listeners"], toml::Value::from(vec!["https"]), "{r}");
    }
    assert_eq!(named(&cfg, "rules", "api-2")["listeners"], toml::Value::from(vec!["http", "https"]));
    assert!(!stderr.contains("redirect_to_https"), "mapped: {stderr}");
    // Without --cluster the request-driven scaling is reported, not guessed.
    assert!(
        stderr
            .contains("tests/import/api/manifest.yml: not mapped: count.requests: pilotfish can scale the ECS service"),
        "{stderr}"
    );

    // `pilotfish check` fetches the certificate from ACM (moto) and passes.
    let path = tmp("https").join("pilotfish.toml");
    std::fs::write(&path, &stdout).unwrap();
    let endpoint = moto.endpoint();
    let said = check_binary(
        &path,
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert!(said.contains("listener \"https\" on 0.0.0.0:8443 (https): 4 rule(s)"), "{said}");
    assert!(said.contains("listener \"http\" on 0.0.0.0:8080 (http): 1 rule(s)"), "{said}");
}

#[test]
fn an_invalid_manifest_is_an_error_naming_the_file_and_nothing_is_written() {
    let dir = tmp("invalid");
    let file = dir.join("out.toml");
    let (f, b, n) = (manifest("frontend"), manifest("broken"), manifest("nlb-only"));
    let out = import(&["--app", "shop", "--env", "test", "-o", file.to_str().unwrap(), &f, &b, &n]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty() && !file.exists(), "no configuration for a broken set");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("tests/import/broken/manifest.yml: not valid YAML: "), "{stderr}");
    assert!(lines[0].contains("at line 4 column 9"), "the YAML error says where: {stderr}");
    assert!(
        lines[1].starts_with(
            "tests/import/nlb-only/manifest.yml: http: false: the service has no Application Load Balancer"
        ),
        "{stderr}"
    );

    let out = import(&["--app", "shop", "--env", "test", "tests/import/nope/manifest.yml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("tests/import/nope/manifest.yml: cannot read the manifest: "));

    // A value pilotfish would refuse is refused here, at its field.
    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "name: bad\ntype: Load Balanced Web Service\nimage: {port: 80}\nhttp:\n  path: /\n  healthcheck: {interval: 2s}\n  allowed_source_ips: [nowhere]\n",
    )
    .unwrap();
    let out = import(&["--app", "shop", "--env", "test", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let b = bad.display();
    assert!(stderr.contains(&format!("{b}: http.allowed_source_ips[0]: ")), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{b}: http.healthcheck.timeout: 5s must be greater than 0 and at most the interval (2s)"
        )),
        "{stderr}"
    );
}

#[test]
fn the_application_comes_from_the_command_line_or_copilots_workspace() {
    // tests/import/.workspace names "shop", as `copilot app init` writes it.
    let out = import(&["--env", "test", &manifest("docs")]);
    let (stdout, _) = imported(&out);
    let cfg = parse(&stdout);
    assert_eq!(
        named(&cfg, "target_groups", "docs")["discovery"]["cloud_map"]["namespace"].as_str(),
        Some("test.shop.local")
    );
    let out = import(&["--app", "books", "--env", "test", &manifest("docs")]);
    let cfg = parse(&imported(&out).0);
    assert_eq!(
        named(&cfg, "target_groups", "docs")["discovery"]["cloud_map"]["namespace"].as_str(),
        Some("test.books.local")
    );

    let dir = tmp("no-workspace");
    std::fs::create_dir_all(dir.join("copilot/docs")).unwrap();
    std::fs::copy(root().join(manifest("docs")), dir.join("copilot/docs/manifest.yml")).unwrap();
    let out = import_in(&dir, &["--env", "test", "copilot/docs/manifest.yml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("needs --app"), "{}", text(&out.stderr));
}

/// The README's worked example: its manifest, imported with its command, prints its TOML.
#[test]
fn the_readme_example_is_what_the_import_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("## Coming from Copilot\n").nth(1).expect("the README has the section");
    let section = section.split("\n## ").next().unwrap();
    let block = |fence: &str| {
        let after = section.split(fence).nth(1).unwrap_or_else(|| panic!("no {fence} block"));
        after.split("\n```").next().unwrap().to_owned()
    };
    let (yaml, toml_text) = (block("```yaml\n"), block("```toml\n"));
    let after_yaml = section.split("```yaml\n").nth(1).unwrap();
    let command =
        after_yaml.split('`').find(|s| s.starts_with("pilotfish import copilot ")).expect("the example's command");
    let args: Vec<&str> = command.split_whitespace().skip(3).collect();
    let path = *args.last().unwrap();

    let dir = tmp("readme");
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, format!("{yaml}\n")).unwrap();
    let out = import_in(&dir, &args);
    let (stdout, stderr) = imported(&out);
    assert_eq!(stdout, format!("{toml_text}\n"), "the README's TOML is what `{command}` prints");
    assert!(stderr.contains("4 field(s) not mapped"), "the README says four: {stderr}");
    passes_check("readme", &stdout);
}
