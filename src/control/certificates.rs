//! The certificate refresh task: every certificate read from AWS is read again each `refresh`
//! (default 1h) and on every reload, and so is every trust store and CRL kept in AWS (mutual
//! TLS); a renewed one is served to new handshakes without a
//! restart ([`super::Control::refresh_certificates`]). Its time left is
//! `pilotfish_certificate_expiry_seconds{certificate}` (every certificate, files too).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::Control;
use crate::config::material::AwsSecret;
use crate::config::Snapshot;
use crate::telemetry::metrics::esc;

/// What the refresh task reads again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Certificate(Arc<str>),
    /// A trust store or CRL.
    Trust(AwsSecret),
}

/// Refreshes the AWS-sourced certificates, trust stores and CRLs of the snapshot in force until
/// the runtime stops.
pub async fn run(control: Arc<Control>) {
    let mut published = control.state.generation_watch();
    // When each item was last read: a new snapshot (a reload, which reads them all, or a
    // refresh) starts every clock again.
    let mut last: HashMap<Item, Instant> = HashMap::new();
    let mut generation = 0;
    loop {
        let snap = control.state.load();
        if snap.generation != generation {
            generation = snap.generation;
            let now = Instant::now();
            let certs =
                snap.certificates.iter().filter(|c| c.source.is_some()).map(|c| Item::Certificate(c.name.clone()));
            let trust = snap.trust_sources.iter().map(|(s, _)| Item::Trust(s.clone()));
            last = certs.chain(trust).map(|i| (i, now)).collect();
        }
        let due_at = |item: &Item| -> Option<Instant> {
            let refresh = match item {
                Item::Certificate(name) => snap.certificates.iter().find(|c| &c.name == name)?.refresh,
                Item::Trust(src) => snap.trust_sources.iter().find(|(s, _)| s == src)?.1,
            };
            Some(last.get(item).copied()? + refresh)
        };
        let next = last.keys().filter_map(due_at).min();
        let Some(next) = next else {
            // Nothing from AWS: wait for the next configuration.
            if published.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let now = Instant::now();
        let due: Vec<Item> = last.keys().filter(|i| due_at(i).is_some_and(|t| t <= now)).cloned().collect();
        let certs: Vec<Arc<str>> =
            due.iter().filter_map(|i| if let Item::Certificate(n) = i { Some(n.clone()) } else { None }).collect();
        let trust: Vec<AwsSecret> =
            due.iter().filter_map(|i| if let Item::Trust(s) = i { Some(s.clone()) } else { None }).collect();
        control.refresh_certificates(&certs).await;
        control.refresh_trust(&trust).await;
        let now = Instant::now();
        for i in due {
            last.insert(i, now);
        }
    }
}

/// `pilotfish_certificate_expiry_seconds`: the time left on every certificate of `snap`.
pub fn render_expiry(snap: &Snapshot, out: &mut String) {
    out.push_str("# HELP pilotfish_certificate_expiry_seconds Time left until the certificate expires.\n# TYPE pilotfish_certificate_expiry_seconds gauge\n");
    let now = SystemTime::now();
    for c in &snap.certificates {
        let left = match c.not_after.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let _ = writeln!(out, "pilotfish_certificate_expiry_seconds{{certificate=\"{}\"}} {left:.0}", esc(&c.name));
    }
}
