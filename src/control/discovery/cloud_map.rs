//! AWS Cloud Map: `DiscoverInstances` by namespace and service name, keeping instances that have
//! `AWS_INSTANCE_IPV4` and a port (`AWS_INSTANCE_PORT`, or the configured port).

use std::net::{IpAddr, SocketAddr};

use aws_sdk_servicediscovery::types::HealthStatusFilter;
use aws_sdk_servicediscovery::Client;

use crate::balance::TargetSpec;
use crate::control::aws::{AwsError, NoHostPrefix};

/// One Cloud Map service.
pub struct CloudMap {
    client: Client,
    namespace: String,
    service: String,
    health: HealthStatusFilter,
    port: Option<u16>,
}

impl CloudMap {
    /// A source for `namespace`/`service`; `custom_endpoint` drops the `data-` host prefix.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        custom_endpoint: bool,
        namespace: String,
        service: String,
        health: String,
        port: Option<u16>,
    ) -> Self {
        let mut conf = aws_sdk_servicediscovery::config::Builder::from(sdk);
        if custom_endpoint {
            conf = conf.interceptor(NoHostPrefix);
        }
        CloudMap {
            client: Client::from_conf(conf.build()),
            namespace,
            service,
            health: HealthStatusFilter::from(health.as_str()),
            port,
        }
    }

    /// The instances Cloud Map reports now.
    pub async fn fetch(&self) -> Result<Vec<TargetSpec>, AwsError> {
        let out = self
            .client
            .discover_instances()
            .namespace_name(&self.namespace)
            .service_name(&self.service)
            .health_status(self.health.clone())
            .max_results(1000)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DiscoverInstances", e))?;
        let mut specs: Vec<TargetSpec> = out
            .instances()
            .iter()
            .filter_map(|i| {
                let attrs = i.attributes()?;
                let ip: IpAddr = attrs.get("AWS_INSTANCE_IPV4")?.parse().ok()?;
                let port = self.port.or_else(|| attrs.get("AWS_INSTANCE_PORT")?.parse().ok())?;
                Some(TargetSpec { addr: SocketAddr::new(ip, port), weight: 100 })
            })
            .collect();
        specs.sort_by_key(|s| s.addr);
        specs.dedup();
        Ok(specs)
    }
}
