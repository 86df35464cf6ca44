//! Violations of the shared rules. Every message names the field and the bad value.

/// A value broke one of the protocol's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A digest field is malformed.
    #[error("{field}: {reason}")]
    Digest { field: String, reason: String },
    /// A manifest path breaks the path rules.
    #[error("{field}: path {} {reason}", crate::quote::quote(.path))]
    Path {
        field: String,
        path: String,
        reason: String,
    },
    /// Two manifest entries break ordering or uniqueness.
    #[error("{field}: {reason}")]
    Order { field: String, reason: String },
    /// A namespace or ref name breaks the naming rules.
    #[error("{field}: {} {reason}", crate::quote::quote(.value))]
    Name {
        field: String,
        value: String,
        reason: String,
    },
    /// A field is over a bound or holds what it may not (free text, batch lengths).
    #[error("{field}: {reason}")]
    Bound { field: String, reason: String },
    /// A required field is absent.
    #[error("{field} is required")]
    Missing { field: String },
    /// Canonical manifest bytes could not be decoded.
    #[error("manifest encoding: {0}")]
    Encoding(String),
}

impl RuleError {
    /// Prefixes the field name, e.g. `entries[3]` + `digest.hash`.
    pub fn within(self, outer: &str) -> Self {
        let join = |f: String| {
            if f.is_empty() {
                outer.to_string()
            } else {
                format!("{outer}.{f}")
            }
        };
        match self {
            RuleError::Digest { field, reason } => RuleError::Digest {
                field: join(field),
                reason,
            },
            RuleError::Path {
                field,
                path,
                reason,
            } => RuleError::Path {
                field: join(field),
                path,
                reason,
            },
            RuleError::Order { field, reason } => RuleError::Order {
                field: join(field),
                reason,
            },
            RuleError::Name {
                field,
                value,
                reason,
            } => RuleError::Name {
                field: join(field),
                value,
                reason,
            },
            RuleError::Bound { field, reason } => RuleError::Bound {
                field: join(field),
                reason,
            },
            RuleError::Missing { field } => RuleError::Missing { field: join(field) },
            e @ RuleError::Encoding(_) => e,
        }
    }
}

impl From<RuleError> for tonic::Status {
    fn from(e: RuleError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
