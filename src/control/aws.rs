//! The control thread's AWS plumbing, shared by discovery, the CloudWatch publisher and the
//! autoscaler: the SDK configuration from `[aws]`, the Cloud Map host-prefix fix for custom
//! endpoints, and one error type that names the operation and AWS error code for operators.

use std::time::Duration;

use aws_smithy_runtime_api::client::endpoint::EndpointPrefix;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::config::snapshot::AwsSettings;

/// A failed call to AWS (or to DNS, for DNS discovery: `operation` names the query), described
/// for operators.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {code}: {message}")]
pub struct AwsError {
    /// The AWS operation (`DiscoverInstances`, `ListTasks`, …).
    pub operation: &'static str,
    /// The AWS error code, or the transport failure's kind.
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// Describes an SDK error of `operation`.
    pub fn sdk<E, R>(operation: &'static str, e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Self
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use aws_smithy_runtime_api::client::result::SdkError;
        let (code, message) = match &e {
            SdkError::ServiceError(s) => (
                s.err().code().unwrap_or("ServiceError").to_string(),
                s.err().message().map_or_else(|| s.err().to_string(), str::to_string),
            ),
            SdkError::TimeoutError(_) => ("Timeout".into(), "the call timed out".into()),
            SdkError::DispatchFailure(d) => ("DispatchFailure".into(), format!("{d:?}").chars().take(300).collect()),
            other => ("SdkError".into(), other.to_string()),
        };
        AwsError { operation, code, message }
    }
}

/// The SDK configuration from `[aws]`: region, endpoint override, the standard credential chain.
pub async fn sdk_config(aws: &AwsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(10)).build(),
    );
    if let Some(r) = &aws.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(u) = &aws.endpoint_url {
        loader = loader.endpoint_url(u.clone());
    }
    loader.load().await
}

/// Cloud Map's DiscoverInstances goes to `data-<endpoint host>`; with a custom `endpoint_url`
/// (a VPC endpoint, an emulator) that host does not exist, so the prefix is dropped. Real AWS
/// endpoints keep it (this interceptor is only installed with `endpoint_url`).
#[derive(Debug)]
pub struct NoHostPrefix;

impl Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "pilotfish::NoHostPrefix"
    }

    fn modify_before_retry_loop(
        &self,
        _ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state().unset::<EndpointPrefix>();
        Ok(())
    }
}
