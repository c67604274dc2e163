//! Every AWS request goes through [`Aws::send`]: budget, retries, counting, classification.
//!
//! One wrapper instead of the SDK's built-in retry loop, because each *attempt* must take a
//! token from the region's budget and be counted, and because retrying is not always safe:
//! a create call whose request may already have reached AWS (a timeout, a dropped
//! connection) is not resent — EC2 has no idempotency token for `CreateVpc` or
//! `CreateSubnet`, so a resend could make a twin. The pass fails instead, and the next pass
//! finds the resource by its tags. Throttling and 5xx answers mean AWS did not act, so they
//! are retried with capped, fully jittered exponential backoff.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use flotilla_core::CloudError;
use flotilla_core::cloud::{CallOutcome, FinishedCall};
use rand::Rng;

use crate::Aws;

/// Error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "SlowDown",
];

/// Codes that mean the credentials themselves are not accepted (or there are none).
pub(crate) const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "NoCredentials",
];

/// Codes that mean the credentials work but lack a permission (`AccessDenied` is moto's
/// spelling of EC2's `UnauthorizedOperation`).
pub(crate) const PERMISSION_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];

/// 5xx codes that are answers, not failures: retrying them in the same place cannot help.
const FINAL_SERVER_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "Unsupported",
];

/// Whether resending a request could do its work twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Describes, deletes, attaches, launches with a client token.
    Safe,
    /// Creates without a client token.
    CreatesSomething,
}

/// One failed AWS call, after retries.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    pub operation: &'static str,
    pub region: String,
    pub code: Option<String>,
    pub message: String,
    pub status: Option<u16>,
    /// No answer from AWS (connection, timeout).
    pub transport: bool,
    pub retryable: bool,
}

impl CallError {
    /// How the call ended, for metrics.
    pub fn outcome(&self) -> CallOutcome {
        if THROTTLING.contains(&self.code()) {
            CallOutcome::Throttled
        } else if self.transport {
            CallOutcome::Transport
        } else if self.status.is_some_and(|s| s >= 500) {
            CallOutcome::ServerError
        } else {
            CallOutcome::ClientError
        }
    }

    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }

    pub fn is(&self, code: &str) -> bool {
        self.code() == code
    }

    pub fn starts_with(&self, prefix: &str) -> bool {
        self.code().starts_with(prefix)
    }

    fn describe(&self) -> String {
        match &self.code {
            Some(code) => format!("{code}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// The generic classification; call sites refine it where they know more (a missing id
    /// that the user supplied, a capacity error in a known AZ).
    pub fn into_cloud_error(self) -> CloudError {
        let operation = format!("{} in {}", self.operation, self.region);
        match self.code() {
            code if CREDENTIAL_CODES.contains(&code) => CloudError::InvalidCredentials {
                message: format!("{} ({operation})", self.describe()),
            },
            code if PERMISSION_CODES.contains(&code) => {
                let hint = self
                    .message
                    .contains("iam:PassRole")
                    .then(|| PASS_ROLE_HINT.to_owned());
                CloudError::PermissionDenied {
                    operation,
                    message: self.describe(),
                    hint,
                }
            }
            _ if self.retryable || self.transport => CloudError::Transient {
                operation,
                message: self.describe(),
            },
            _ => CloudError::Other {
                operation,
                message: self.describe(),
            },
        }
    }
}

/// Seed 000: "AWS returned an error: unauthorized operation" with instance profiles.
pub(crate) const PASS_ROLE_HINT: &str = "The instance profile has more permissions than the IAM user Flotilla uses: \
add \"Action\": \"iam:PassRole\" to the IAM policy of that user (see AWS: Granting Permission to Launch EC2 \
Instances with IAM Roles)";

pub(crate) type HttpResponse = aws_smithy_runtime_api::client::orchestrator::HttpResponse;

fn classify<E>(
    operation: &'static str,
    region: &str,
    error: &SdkError<E, HttpResponse>,
) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut call_error = CallError {
        operation,
        region: region.to_owned(),
        code: None,
        message: String::new(),
        status: None,
        transport: false,
        retryable: false,
    };
    match error {
        SdkError::ServiceError(service) => {
            call_error.code = service.err().code().map(str::to_owned);
            call_error.message = service.err().message().unwrap_or("no message").to_owned();
        }
        SdkError::TimeoutError(_) => {
            call_error.transport = true;
            call_error.message = "timed out".into();
        }
        SdkError::DispatchFailure(failure) => {
            if let Some(missing) = failure
                .as_connector_error()
                .and_then(|e| credentials_problem(e))
            {
                // Not a network problem: retrying cannot help, and the user must act.
                call_error.code = Some("NoCredentials".into());
                call_error.message = format!(
                    "no usable AWS credentials ({missing}); set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, choose a profile, or run where an instance role is available"
                );
            } else {
                call_error.transport = true;
                call_error.message = match failure.as_connector_error() {
                    Some(error) => format!("could not reach AWS: {}", error_chain(error)),
                    None => "could not reach AWS".into(),
                };
            }
        }
        SdkError::ResponseError(response) => {
            call_error.transport = true;
            call_error.message = format!("unreadable response: {:?}", response.raw());
        }
        other => {
            call_error.message = format!("{other}");
        }
    }
    if call_error.code.is_none()
        && let Some(code) = error.code()
    {
        call_error.code = Some(code.to_owned());
    }
    call_error.status = error.raw_response().map(|r| r.status().as_u16());
    let code = call_error.code();
    call_error.retryable = THROTTLING.contains(&code)
        || (call_error.status.is_some_and(|s| s >= 500) && !FINAL_SERVER_CODES.contains(&code))
        || matches!(
            code,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable"
        );
    call_error
}

/// The credential provider's error, if that is why a request could not be sent.
fn credentials_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(credentials) =
            error.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            return Some(match credentials {
                aws_credential_types::provider::error::CredentialsError::CredentialsNotLoaded(
                    _,
                ) => "none found".to_owned(),
                other => other.to_string(),
            });
        }
        current = error.source();
    }
    None
}

/// An error and its sources on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(error) = current {
        parts.push(error.to_string());
        current = error.source();
    }
    parts.join(": ")
}

impl Aws {
    /// Sends one logical call: waits for the region's budget before every attempt, retries
    /// what is safe to retry, counts calls and attempts per operation.
    pub(crate) async fn send<T, E, Fut>(
        &self,
        region: &str,
        operation: &'static str,
        idempotency: Idempotency,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.counters.count_call(operation);
        let budget = self.budget(region);
        let started = Instant::now();
        let mut throttled_attempts = 0u32;
        let mut tries = 0u32;
        let result = loop {
            tries += 1;
            budget.acquire().await;
            self.counters.count_attempt(operation);
            let error = match attempt().await {
                Ok(output) => {
                    budget.succeeded();
                    break Ok(output);
                }
                Err(error) => classify(operation, region, &error),
            };
            if THROTTLING.contains(&error.code()) {
                budget.throttled();
                throttled_attempts += 1;
            }
            let may_retry = if error.transport {
                idempotency == Idempotency::Safe
            } else {
                error.retryable
            };
            if !may_retry || tries >= self.settings.max_attempts {
                if may_retry {
                    tracing::warn!(
                        operation,
                        region,
                        code = error.code(),
                        tries,
                        "giving up after retries"
                    );
                }
                break Err(error);
            }
            let ceiling = self
                .settings
                .retry_base
                .saturating_mul(1 << (tries - 1).min(16))
                .min(self.settings.retry_cap);
            let pause =
                Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()));
            tracing::debug!(operation, region, code = error.code(), ?pause, "retrying");
            tokio::time::sleep(pause).await;
        };
        if let Some(observer) = self.settings.observer.get() {
            observer.finished(&FinishedCall {
                service: service_of::<E>(),
                operation,
                region,
                outcome: match &result {
                    Ok(_) => CallOutcome::Ok,
                    Err(error) => error.outcome(),
                },
                seconds: started.elapsed().as_secs_f64(),
                throttled_attempts,
                budget_rate: budget.rate(),
            });
        }
        result
    }
}

/// The AWS API an operation error type belongs to, from its crate (`aws_sdk_ec2::…` →
/// `ec2`), so no call site has to name its service.
fn service_of<E>() -> &'static str {
    let path = std::any::type_name::<E>();
    let krate = path.split("::").next().unwrap_or(path);
    krate.strip_prefix("aws_sdk_").unwrap_or(krate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, message: &str) -> CallError {
        CallError {
            operation: "RunInstances",
            region: "us-east-1".into(),
            code: Some(code.into()),
            message: message.into(),
            status: Some(403),
            transport: false,
            retryable: false,
        }
    }

    #[test]
    fn the_service_comes_from_the_error_types_crate() {
        assert_eq!(
            service_of::<aws_sdk_ec2::operation::run_instances::RunInstancesError>(),
            "ec2"
        );
        assert_eq!(
            service_of::<aws_sdk_iam::operation::list_instance_profiles::ListInstanceProfilesError>(
            ),
            "iam"
        );
        assert_eq!(
            service_of::<aws_sdk_elasticloadbalancingv2::operation::create_load_balancer::CreateLoadBalancerError>(),
            "elasticloadbalancingv2"
        );
    }

    #[test]
    fn outcomes_follow_the_code_and_status() {
        assert_eq!(
            error("RequestLimitExceeded", "x").outcome(),
            CallOutcome::Throttled
        );
        assert_eq!(
            error("InvalidParameterValue", "x").outcome(),
            CallOutcome::ClientError
        );
        let mut internal = error("InternalError", "x");
        internal.status = Some(500);
        assert_eq!(internal.outcome(), CallOutcome::ServerError);
        let mut unreachable = error("", "x");
        unreachable.code = None;
        unreachable.transport = true;
        assert_eq!(unreachable.outcome(), CallOutcome::Transport);
    }

    #[test]
    fn pass_role_denials_carry_the_seed_hint() {
        let e = error(
            "UnauthorizedOperation",
            "not authorized to perform: iam:PassRole on resource: role/x",
        );
        let text = e.into_cloud_error().to_string();
        assert!(text.contains("iam:PassRole\" to the IAM policy"), "{text}");
        let plain = error(
            "UnauthorizedOperation",
            "not authorized to perform: ec2:RunInstances",
        )
        .into_cloud_error();
        assert!(matches!(
            plain,
            CloudError::PermissionDenied { hint: None, .. }
        ));
    }

    #[test]
    fn credential_codes_are_invalid_credentials() {
        for code in [
            "AuthFailure",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
        ] {
            assert!(matches!(
                error(code, "x").into_cloud_error(),
                CloudError::InvalidCredentials { .. }
            ));
        }
    }
}
