//! [`CronError`]: why a cron expression or a `cron` binding is refused.

/// Why a cron expression, or a `cron` trigger binding, is refused. The text (the registrant's
/// `trigger_registration_failed` message) is one line naming the expression or the zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The expression is empty or only whitespace.
    #[error("cron expression is empty")]
    EmptyExpression,
    /// The zone is not an IANA zone name.
    #[error("unknown timezone '{0}' (expected an IANA name such as 'Europe/Paris')")]
    UnknownTimezone(String),
    /// The expression does not parse; the text names it and the problem.
    #[error("{0}")]
    InvalidExpression(String),
    /// The binding's config is not an object of the expected shape.
    #[error("invalid cron trigger config: {0}")]
    InvalidConfig(String),
    /// The binding's config has no `expression`.
    #[error("invalid cron trigger config: expression is required")]
    MissingExpression,
    /// The binding was made outside the engine's tokio runtime.
    #[error("cron jobs need the engine's runtime")]
    NoRuntime,
}
