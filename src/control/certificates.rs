//! The certificate refresh task: every certificate read from AWS is read again each `refresh`
//! (default 1h) and on every reload; a renewed one is served to new handshakes without a
//! restart ([`super::Control::refresh_certificates`]). Its time left is
//! `pilotfish_certificate_expiry_seconds{certificate}` (every certificate, files too).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::Control;
use crate::config::Snapshot;
use crate::telemetry::metrics::esc;

/// Refreshes the AWS-sourced certificates of the snapshot in force until the runtime stops.
pub async fn run(control: Arc<Control>) {
    let mut published = control.state.generation_watch();
    // When each certificate was last read: a new snapshot (a reload, which reads them all, or
    // a refresh) starts every clock again.
    let mut last: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut generation = 0;
    loop {
        let snap = control.state.load();
        if snap.generation != generation {
            generation = snap.generation;
            let now = Instant::now();
            last = snap.certificates.iter().filter(|c| c.source.is_some()).map(|c| (c.name.clone(), now)).collect();
        }
        let due_at = |name: &Arc<str>| -> Option<Instant> {
            let c = snap.certificates.iter().find(|c| &c.name == name)?;
            Some(last.get(name).copied()? + c.refresh)
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
        let due: Vec<Arc<str>> = last.keys().filter(|n| due_at(n).is_some_and(|t| t <= now)).cloned().collect();
        control.refresh_certificates(&due).await;
        let now = Instant::now();
        for n in due {
            last.insert(n, now);
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
