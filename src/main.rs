//! The `pilotfish` command: `run`, `check`, `demo`, `healthcheck`, `import copilot`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pilotfish::server::{ConfigSource, Options, Server, StartError};

/// mimalloc: measured faster than glibc malloc on the request path (see the commit adding it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pilotfish", version, about = "A fast Layer-7 load balancer with service discovery")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        /// The configuration: a file, s3://BUCKET/KEY or ssm:/PARAMETER/NAME.
        #[arg(short, long, env = "PILOTFISH_CONFIG", default_value = "pilotfish.toml", value_parser = ConfigSource::parse)]
        config: ConfigSource,
        /// Check the configuration's source this often and reload when it changed ("30s"; "0s":
        /// never). Default: never for files, 60s for S3 and SSM.
        #[arg(long, env = "PILOTFISH_POLL", value_parser = humantime::parse_duration)]
        poll: Option<Duration>,
    },
    /// Validate a configuration: prints a summary (exit 0) or FILE:LINE:COL errors (exit 2).
    Check {
        /// The configuration: a file, s3://BUCKET/KEY or ssm:/PARAMETER/NAME.
        #[arg(short, long, env = "PILOTFISH_CONFIG", default_value = "pilotfish.toml", value_parser = ConfigSource::parse)]
        config: ConfigSource,
    },
    /// Start two demo backends and the balancer on 127.0.0.1:8080 (admin 9901).
    Demo,
    /// Exit 0 if URL answers 2xx (for a container HEALTHCHECK).
    Healthcheck {
        #[arg(default_value = "http://127.0.0.1:9901/readyz")]
        url: String,
    },
    /// Make a configuration from another tool's description of the services.
    #[command(subcommand)]
    Import(Import),
}

#[derive(Subcommand)]
enum Import {
    /// Turn AWS Copilot Load Balanced Web Service manifests into a pilotfish configuration;
    /// prints what it could not map (stderr, and as comments in the output).
    Copilot(CopilotArgs),
}

#[derive(clap::Args)]
struct CopilotArgs {
    /// The Copilot application (default: `application:` of copilot/.workspace beside the
    /// manifests' folders).
    #[arg(long)]
    app: Option<String>,
    /// The environment whose `environments:` overrides apply and whose Cloud Map namespace
    /// (<env>.<app>.local) the targets are found in.
    #[arg(long)]
    env: String,
    /// Write the configuration here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// An exportable ACM certificate for the https listener (repeatable; the first is the
    /// default). Without one, only the http listener is made.
    #[arg(long = "certificate-arn", value_name = "ARN")]
    certificate_arns: Vec<String>,
    /// [aws] region (default: the certificate ARN's region; else none is written and the SDK
    /// reads AWS_REGION at run time).
    #[arg(long)]
    region: Option<String>,
    /// The http listener's port (pilotfish's task definition maps 8080).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// The https listener's port (pilotfish's task definition maps 8443).
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// Where targets are found: cloud_map (Copilot's service discovery) or ecs (the service's tasks).
    #[arg(long, value_enum, default_value_t = DiscoveryArg::CloudMap)]
    discovery: DiscoveryArg,
    /// The environment's ECS cluster (required with --discovery ecs; enables autoscaling from `count`).
    #[arg(long)]
    cluster: Option<String>,
    /// The ECS service name of a Copilot service, SVC=NAME (repeatable; default: SVC).
    #[arg(long = "ecs-service", value_name = "SVC=NAME", value_parser = svc_name)]
    ecs_services: Vec<(String, String)>,
    /// Peers whose PROXY protocol headers both listeners read (repeatable): the NLB in front,
    /// e.g. its subnets' CIDRs (deploy/cloudformation.yaml turns PROXY v2 on).
    #[arg(long = "proxy-trusted", value_name = "CIDR")]
    proxy_trusted: Vec<String>,
    /// manifest.yml files.
    #[arg(required = true, value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DiscoveryArg {
    #[value(name = "cloud_map", alias = "cloud-map")]
    CloudMap,
    Ecs,
}

fn svc_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, name)) if !svc.is_empty() && !name.is_empty() => Ok((svc.into(), name.into())),
        _ => Err("expected SVC=NAME".into()),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, poll } => run(config, poll),
        Command::Check { config } => return check(&config),
        Command::Demo => demo(),
        Command::Healthcheck { url } => return healthcheck(&url),
        Command::Import(Import::Copilot(args)) => import_copilot(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pilotfish: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: ConfigSource, poll: Option<Duration>) -> anyhow::Result<ExitCode> {
    let server = match Server::start(Options { config, access_log: None, signals: true, poll }) {
        Ok(s) => s,
        Err(StartError::Config(d)) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    server.wait_for_shutdown_signal();
    let cut = server.shutdown();
    Ok(if cut == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn check(source: &ConfigSource) -> ExitCode {
    let metrics = pilotfish::telemetry::metrics::Metrics::default();
    let (doc, material, _) = match pilotfish::server::load(source, &metrics) {
        Ok(x) => x,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::from(2);
        }
    };
    let name = doc.name.clone();
    let input = pilotfish::config::CompileInput {
        name: &name,
        text: &doc.text,
        previous: None,
        metrics: &metrics,
        generation: 1,
        base_dir: source.base_dir(),
        material: &material,
    };
    match pilotfish::config::compile(input) {
        Ok((snap, warnings)) => {
            for w in warnings.warnings() {
                eprintln!("{w}");
            }
            println!("{name}: OK");
            for l in &snap.listeners {
                println!(
                    "  listener {:?} on {} ({}): {} rule(s)",
                    &*l.name,
                    l.bind,
                    l.protocol.as_str(),
                    l.router.rules().len()
                );
            }
            for u in &snap.upstreams {
                println!(
                    "  target group {:?}: {} target(s), {}, {}",
                    &*u.group.name,
                    u.group.targets().targets().len(),
                    u.group.settings.algorithm.as_str(),
                    u.transport.protocol.as_str()
                );
            }
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprintln!("{d}");
            ExitCode::from(2)
        }
    }
}

fn import_copilot(args: CopilotArgs) -> anyhow::Result<ExitCode> {
    use pilotfish::import::copilot;
    let mut manifests = Vec::new();
    let mut unreadable = false;
    for path in &args.manifests {
        match std::fs::read_to_string(path) {
            Ok(text) => manifests.push(copilot::Manifest { file: path.display().to_string(), text }),
            Err(e) => {
                eprintln!("{}: cannot read the manifest: {e}", path.display());
                unreadable = true;
            }
        }
    }
    if unreadable {
        return Ok(ExitCode::from(2));
    }
    let Some(app) = args.app.clone().or_else(|| args.manifests.iter().find_map(|m| copilot::workspace_app(m))) else {
        eprintln!("pilotfish import copilot: needs --app (no copilot/.workspace beside the manifests names one)");
        return Ok(ExitCode::from(2));
    };
    let mut opts = copilot::Options::new(&app, &args.env);
    opts.http_port = args.http_port;
    opts.https_port = args.https_port;
    opts.certificate_arns = args.certificate_arns;
    opts.region = args.region;
    opts.discovery = match args.discovery {
        DiscoveryArg::CloudMap => copilot::Discovery::CloudMap,
        DiscoveryArg::Ecs => copilot::Discovery::Ecs,
    };
    opts.cluster = args.cluster;
    opts.ecs_services = args.ecs_services.into_iter().collect();
    opts.proxy_trusted = args.proxy_trusted;
    let imported = match copilot::import(&opts, &manifests) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    for n in &imported.notes {
        eprintln!("{n}");
    }
    let unmapped = imported.notes.iter().filter(|n| n.kind == pilotfish::import::NoteKind::Unmapped).count();
    match &args.output {
        Some(path) => std::fs::write(path, &imported.toml).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", imported.toml),
    }
    eprintln!(
        "pilotfish import copilot: {} service(s), {} rule(s), {} target group(s){}; {unmapped} field(s) not mapped{}",
        imported.services,
        imported.rules,
        imported.target_groups,
        args.output.as_ref().map_or(String::new(), |p| format!(" written to {}", p.display())),
        if unmapped > 0 { " (listed above, and as comments in the configuration)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn demo() -> anyhow::Result<ExitCode> {
    let backends = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (a, b) = backends.block_on(async {
        anyhow::Ok((pilotfish::demo::start_backend("a").await?, pilotfish::demo::start_backend("b").await?))
    })?;
    let server = Server::start(Options {
        config: ConfigSource::Text { name: "<demo>".into(), text: pilotfish::demo::config(a, b) },
        access_log: None,
        signals: true,
        poll: None,
    })
    .context("starting the demo (is 127.0.0.1:8080 or :9901 in use?)")?;
    eprintln!("{}", pilotfish::demo::TRY);
    server.wait_for_shutdown_signal();
    server.shutdown();
    backends.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

fn healthcheck(url: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(_) => return ExitCode::from(1),
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), get_status(url)).await }) {
        Ok(Ok(s)) if (200..300).contains(&s) => ExitCode::SUCCESS,
        Ok(Ok(s)) => {
            eprintln!("{url}: HTTP {s}");
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("{url}: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("{url}: timed out");
            ExitCode::from(1)
        }
    }
}

async fn get_status(url: &str) -> anyhow::Result<u16> {
    let uri: http::Uri = url.parse().context("bad URL")?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "only http:// URLs are supported");
    let host = uri.host().context("URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(tx.send_request(req).await?.status().as_u16())
}
