//! Amazon ECS: the RUNNING tasks of a service. `ListTasks` (paginated, desired status RUNNING)
//! → `DescribeTasks` in batches of 100 → each task whose last and desired status are both
//! RUNNING and whose group is `service:<name>` becomes a target at its ENI's private IPv4
//! address (awsvpc, Fargate) and `container_port`, or at a host port mapping of `container_name`
//! (bridge/host mode) when the binding names a concrete host address. A task that is stopping
//! (desired STOPPED, or last status past RUNNING) is left out, so it drains at the next refresh,
//! before its SIGTERM lands.

use std::net::{IpAddr, SocketAddr};

use aws_sdk_ecs::types::{DesiredStatus, Task};
use aws_sdk_ecs::Client;

use crate::balance::TargetSpec;
use crate::control::aws::AwsError;

/// One ECS service.
pub struct Ecs {
    client: Client,
    cluster: String,
    service: String,
    container_name: Option<String>,
    container_port: u16,
}

impl Ecs {
    /// A source for `cluster`/`service`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        cluster: String,
        service: String,
        container_name: Option<String>,
        container_port: u16,
    ) -> Self {
        Ecs { client: Client::new(sdk), cluster, service, container_name, container_port }
    }

    /// The service's running tasks now.
    pub async fn fetch(&self) -> Result<Vec<TargetSpec>, AwsError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .list_tasks()
                .cluster(&self.cluster)
                .service_name(&self.service)
                .desired_status(DesiredStatus::Running)
                .max_results(100)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| AwsError::sdk("ListTasks", e))?;
            arns.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        let group = format!("service:{}", self.service);
        let mut specs = Vec::new();
        for batch in arns.chunks(100) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::sdk("DescribeTasks", e))?;
            for task in out.tasks() {
                // ListTasks' service filter is not honoured everywhere (emulators): check the group.
                if task.group() != Some(group.as_str())
                    || task.last_status() != Some("RUNNING")
                    || task.desired_status() != Some("RUNNING")
                {
                    continue;
                }
                if let Some(addr) = self.address(task) {
                    specs.push(TargetSpec { addr, weight: 100 });
                }
            }
        }
        specs.sort_by_key(|s| s.addr);
        specs.dedup();
        Ok(specs)
    }

    fn address(&self, task: &Task) -> Option<SocketAddr> {
        // awsvpc (Fargate): the task's ENI.
        let eni_ip = task
            .attachments()
            .iter()
            .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
            .flat_map(|a| a.details())
            .find(|d| d.name() == Some("privateIPv4Address"))
            .and_then(|d| d.value()?.parse::<IpAddr>().ok());
        if let Some(ip) = eni_ip {
            return Some(SocketAddr::new(ip, self.container_port));
        }
        // bridge/host: the container's port mapping.
        task.containers()
            .iter()
            .filter(|c| self.container_name.as_deref().is_none_or(|n| c.name() == Some(n)))
            .flat_map(|c| c.network_bindings())
            .filter(|b| b.container_port() == Some(i32::from(self.container_port)))
            .find_map(|b| {
                let ip: IpAddr = b.bind_ip()?.parse().ok().filter(|ip: &IpAddr| !ip.is_unspecified())?;
                Some(SocketAddr::new(ip, u16::try_from(b.host_port()?).ok()?))
            })
    }
}
