//! DNS discovery: the targets of a group are the A / AAAA records of a name (with the
//! configured port) or its SRV records (port and weight from each record, the target names
//! resolved to addresses) — how Cloud Map DNS namespaces, ECS Service Connect, Consul and
//! Kubernetes headless services publish instances.
//!
//! Asked through hickory-resolver, with its cache off: each refresh is a real query, and the
//! answer's TTL (the smallest of the records used) says when to ask again — never later than
//! `refresh`, never sooner than [`MIN_INTERVAL`] (a TTL of 0 is common for service records).
//! SRV records of the lowest priority value are the targets (RFC 2782: the others are
//! fallbacks); their weights map onto pilotfish's 1..=999: as they are when all fit, else
//! scaled to the largest (999); 0 becomes 1, so a record is never dropped, and all-zero weights
//! are equal. A target name that does not resolve (or `.`, "no service here") is left out and
//! logged; the answer is an error only when none resolves. NXDOMAIN, an empty answer and
//! failures are errors to the discovery loop: the last known targets stay.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::balance::TargetSpec;
use crate::config::file::DnsType;
use crate::control::aws::AwsError;

/// The shortest time between two lookups, whatever the TTL.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Every lookup's budget (each of the resolver's attempts gets a share).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A DNS source.
pub struct Dns {
    resolver: TokioResolver,
    /// Fully qualified (trailing dot): the system's search list never applies.
    name: String,
    kind: DnsType,
    port: Option<u16>,
}

/// What a lookup found and how long it holds.
pub struct Found {
    pub targets: Vec<TargetSpec>,
    pub ttl: Duration,
}

fn error(operation: &'static str, e: &NetError) -> AwsError {
    let code = if e.is_nx_domain() {
        "NXDOMAIN".to_string()
    } else if e.is_no_records_found() {
        "NoRecords".to_string()
    } else {
        "LookupFailed".to_string()
    };
    AwsError { operation, code, message: e.to_string() }
}

impl Dns {
    /// A source asking `resolver` (None: the servers of /etc/resolv.conf).
    pub fn new(name: &str, kind: DnsType, port: Option<u16>, resolver: Option<SocketAddr>) -> Result<Dns, AwsError> {
        let built = match resolver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                Ok(TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                ))
            }
            None => TokioResolver::builder_tokio(),
        };
        let mut builder = built.map_err(|e| AwsError {
            operation: "DNS resolver",
            code: "NoResolver".into(),
            message: format!("reading /etc/resolv.conf: {e}"),
        })?;
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = TIMEOUT / 2;
        opts.attempts = 2;
        let resolver = builder.build().map_err(|e| AwsError {
            operation: "DNS resolver",
            code: "NoResolver".into(),
            message: e.to_string(),
        })?;
        Ok(Dns { resolver, name: format!("{}.", name.trim_end_matches('.')), kind, port })
    }

    /// The targets the records name now, sorted, and their TTL.
    pub async fn fetch(&self) -> Result<Found, AwsError> {
        match self.kind {
            DnsType::A | DnsType::AAAA => {
                let (rtype, op) =
                    if self.kind == DnsType::A { (RecordType::A, "DNS A") } else { (RecordType::AAAA, "DNS AAAA") };
                let port = self.port.unwrap_or(80);
                let (ips, ttl) = self.addresses(&self.name, rtype, op).await?;
                let mut targets: Vec<TargetSpec> =
                    ips.into_iter().map(|ip| TargetSpec { addr: SocketAddr::new(ip, port), weight: 100 }).collect();
                targets.sort_by_key(|t| t.addr);
                targets.dedup();
                Ok(Found { targets, ttl })
            }
            DnsType::SRV => self.srv().await,
        }
    }

    /// The addresses of `name`'s `rtype` records and their smallest TTL.
    async fn addresses(
        &self,
        name: &str,
        rtype: RecordType,
        op: &'static str,
    ) -> Result<(Vec<IpAddr>, Duration), AwsError> {
        let lookup = self.resolver.lookup(name, rtype).await.map_err(|e| error(op, &e))?;
        let mut ttl = u32::MAX;
        let mut ips = Vec::new();
        for r in lookup.answers() {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                // CNAMEs on the way are followed by the resolver.
                _ => continue,
            };
            ttl = ttl.min(r.ttl);
            ips.push(ip);
        }
        if ips.is_empty() {
            return Err(AwsError {
                operation: op,
                code: "NoRecords".into(),
                message: format!("{name} has no {rtype} records"),
            });
        }
        Ok((ips, Duration::from_secs(u64::from(ttl))))
    }

    /// SRV: the lowest priority's records, each target name resolved (A, then AAAA).
    async fn srv(&self) -> Result<Found, AwsError> {
        let lookup =
            self.resolver.lookup(self.name.as_str(), RecordType::SRV).await.map_err(|e| error("DNS SRV", &e))?;
        let mut ttl = u32::MAX;
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => {
                    ttl = ttl.min(r.ttl);
                    Some(s.clone())
                }
                _ => None,
            })
            .collect();
        let Some(best) = records.iter().map(|s| s.priority).min() else {
            return Err(AwsError {
                operation: "DNS SRV",
                code: "NoRecords".into(),
                message: format!("{} has no SRV records", self.name),
            });
        };
        let best: Vec<_> = records.iter().filter(|s| s.priority == best).collect();
        let max = best.iter().map(|s| u32::from(s.weight)).max().unwrap_or(0);
        let weight = |w: u16| match max {
            0 => 100,
            1..=999 => u32::from(w).max(1),
            _ => (u32::from(w) * 999 / max).max(1),
        };
        let mut ttl = Duration::from_secs(u64::from(ttl));
        let mut targets = Vec::new();
        let mut last_error = None;
        // Each target name in turn; most SRV answers name a handful.
        for s in best {
            if s.target.is_root() {
                continue;
            }
            let host = s.target.to_string();
            let found = match self.addresses(&host, RecordType::A, "DNS A").await {
                Ok(found) => Ok(found),
                Err(_) => self.addresses(&host, RecordType::AAAA, "DNS AAAA").await,
            };
            match found {
                Ok((ips, t)) => {
                    ttl = ttl.min(t);
                    let w = weight(s.weight);
                    targets
                        .extend(ips.into_iter().map(|ip| TargetSpec { addr: SocketAddr::new(ip, s.port), weight: w }));
                }
                Err(e) => {
                    tracing::debug!(srv = %self.name, target = %host, error = %e, "an SRV target does not resolve; left out");
                    last_error = Some(e);
                }
            }
        }
        if targets.is_empty() {
            return Err(last_error.unwrap_or_else(|| AwsError {
                operation: "DNS SRV",
                code: "NoRecords".into(),
                message: format!("{} names no target", self.name),
            }));
        }
        targets.sort_by_key(|t| t.addr);
        targets.dedup_by_key(|t| t.addr);
        Ok(Found { targets, ttl })
    }
}

/// When to ask again after an answer valid for `ttl`: at the TTL, but no later than `refresh`
/// and no sooner than [`MIN_INTERVAL`] (unless `refresh` itself is shorter).
pub fn next_lookup(ttl: Duration, refresh: Duration) -> Duration {
    ttl.max(MIN_INTERVAL).min(refresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_paces_lookups_within_refresh() {
        let s = Duration::from_secs;
        assert_eq!(next_lookup(s(5), s(30)), s(5), "a short TTL asks sooner");
        assert_eq!(next_lookup(s(300), s(30)), s(30), "never later than refresh");
        assert_eq!(next_lookup(s(0), s(30)), MIN_INTERVAL, "a zero TTL is not a busy loop");
        assert_eq!(next_lookup(s(0), Duration::from_millis(200)), Duration::from_millis(200));
    }
}
