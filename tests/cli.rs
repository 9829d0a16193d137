//! The `pilotfish` binary as users run it: `check`, `run` (serving, then SIGTERM), `healthcheck`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::Proc;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pilotfish");

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN).args(["check", "--config"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pilotfish-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("pilotfish.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_toml_example_in_the_readme_passes_check() {
    let blocks = common::readme_toml_blocks();
    assert!(blocks.iter().any(|(aws, _)| !aws), "the README shows a configuration");
    // The examples that read AWS are checked against moto by tests/aws_sources.rs.
    for (i, (_, block)) in blocks.iter().enumerate().filter(|(_, (aws, _))| !aws) {
        let path = temp_file(&format!("readme-{i}"), block);
        // The files the examples name, made here: certificates from a test CA, and the CA.
        let certs = path.parent().unwrap().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ca = common::tls::Ca::new("readme CA");
        ca.issue(&["www.example.com"], &common::tls::ECDSA).write(&certs, "example");
        ca.issue(&["*.example.com"], &common::tls::ECDSA).write(&certs, "wildcard");
        std::fs::write(certs.join("internal-ca.pem"), &ca.pem).unwrap();
        std::fs::write(certs.join("clients-ca.pem"), &ca.pem).unwrap();
        std::fs::write(certs.join("clients.crl"), ca.crl_pem()).unwrap();
        let (code, out, err) = check(&path);
        assert_eq!(code, 0, "README example {i}:\n{out}{err}");
    }
}

#[test]
fn check_accepts_the_example_and_reports_every_error_with_line_and_column() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let (code, out, err) = check(&example);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK") && out.contains("listener \"http\""), "{out}");
    // The summary speaks the configuration's own spellings.
    assert!(out.contains("(http): ") && out.contains("least_outstanding_requests, http1"), "{out}");

    let bad = temp_file(
        "bad",
        r#"[server]
admin_bind = "localhost"

[[listeners]]
name = "web"
bind = "0.0.0.0:80"

[[listeners]]
name = "web"
bind = "0.0.0.0:81"

[[rules]]
name = "r"
listeners = ["web"]
priority = 1
method = ["get"]
forward = [{ target_group = "a", weight = 1000 }]

[[target_groups]]
name = "a"
targets = ["127.0.0.1:80", "127.0.0.1:80"]
"#,
    );
    let (code, _, err) = check(&bad);
    assert_eq!(code, 2, "{err}");
    let f = bad.display().to_string();
    for want in [
        format!("{f}:2:14: bad admin_bind address"),
        format!("{f}:9:8: duplicate listener name \"web\""),
        format!("{f}:16:10: bad method \"get\""),
        format!("{f}:17:11: rule \"r\": forward weight must be 0..=999"),
        format!("{f}:21:28: duplicate target 127.0.0.1:80"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }

    let (code, _, err) = check(std::path::Path::new("/nonexistent/pilotfish.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the configuration file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_sigterm_lets_a_slow_request_finish_then_exits_0() {
    let be = Backend::start("be").await;
    let cfg = temp_file(
        "run",
        &format!(
            "[server]\nadmin_bind = \"127.0.0.1:0\"\nshutdown_drain = \"10s\"\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_action = {{ forward = \"g\" }}\n[[target_groups]]\nname = \"g\"\ntargets = [\"{}\"]\n",
            be.addr
        ),
    );
    let mut p = Proc::run(&cfg).await;
    let web = p.addr("web");
    let c = client();
    let r = get(&c, &format!("http://{web}/hello")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "be"));

    let hc = Command::new(BIN).arg("healthcheck").arg(format!("http://{}/readyz", p.admin)).status().unwrap();
    assert!(hc.success());
    let hc = Command::new(BIN).arg("healthcheck").arg(format!("http://{}/nope", p.admin)).status().unwrap();
    assert!(!hc.success(), "healthcheck fails on a 404");

    let slow = {
        let (c, url) = (c.clone(), format!("http://{web}/slow"));
        tokio::spawn(async move { get_with(&c, &url, &[("x-delay-ms", "1000")]).await })
    };
    assert!(eventually(Duration::from_secs(5), || be.requests() == 2).await);
    p.signal("TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "the in-flight request finished");
    assert_eq!(p.wait_exit(Duration::from_secs(15)).await, Some(0));
}

/// `deploy/cloudformation.yaml` is clean under cfn-lint (errors, warnings and informational
/// findings alike), and says what the Dockerfile and the task definition say.
#[test]
fn the_cloudformation_template_passes_cfn_lint_and_matches_the_task_definition() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lint = common::aws::venv().join("bin/cfn-lint");
    assert!(lint.exists(), "{} is missing: run `make test` (it installs cfn-lint into the venv)", lint.display());
    let out = Command::new(&lint)
        .args(["--include-checks", "I", "--", "deploy/cloudformation.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "cfn-lint:\n{said}");

    let template = std::fs::read_to_string(root.join("deploy/cloudformation.yaml")).unwrap();
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("config/ecs-task-definition.json")).unwrap()).unwrap();
    let container = &task["containerDefinitions"][0];
    let health = container["healthCheck"]["command"].as_array().unwrap();
    let url = health.last().unwrap().as_str().unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(url) && template.contains(url), "one health check URL everywhere: {url}");
    assert_eq!(container["stopTimeout"], 30);
    assert!(template.contains("StopTimeout: 30"), "the template's stopTimeout is the task definition's");
    for port in container["portMappings"].as_array().unwrap() {
        let p = port["containerPort"].as_u64().unwrap();
        assert!(template.contains(&format!("ContainerPort: {p}")), "port {p} in the template");
    }
    for key in ["proxy_protocol_v2.enabled", "load_balancing.cross_zone.enabled"] {
        assert!(template.contains(key), "{key} in the template");
    }
}
