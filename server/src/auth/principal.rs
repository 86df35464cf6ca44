//! Who is calling and what they may do: a principal is an identity with grants; a grant is
//! (namespace pattern, permissions, ref-name prefixes). Handlers ask the principal the
//! request carries; nothing else decides access.

use super::pattern::matches;
use serde::{Deserialize, Serialize};
use stagecache_proto::Namespace;
use tonic::Status;

/// What a grant allows. `Admin` implies every other permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// FindMissing, Download, BatchDownload, manifest and ref reads, ledger reads, Plan,
    /// Watch, Stats.
    Read,
    /// Upload, BatchUpload, Manifests.Put: content that verifies itself by digest.
    Write,
    /// Refs.Set, on the grant's ref-name prefixes only.
    Ref,
    /// Record, RecordBatch, Claim, RenewClaim, ReleaseClaim.
    Record,
    /// Invalidate, including the forced re-sign.
    Invalidate,
    Admin,
}

impl Permission {
    pub fn word(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Ref => "ref",
            Permission::Record => "record",
            Permission::Invalidate => "invalidate",
            Permission::Admin => "admin",
        }
    }
}

/// One grant of a token or trust rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Namespace pattern: `prod`, `test*`, `*`.
    pub namespaces: String,
    pub permissions: Vec<Permission>,
    /// Ref-name prefixes the `ref` permission covers (`bar/`); empty: every ref.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
}

impl Grant {
    fn covers(&self, perm: Permission, ns: &Namespace) -> bool {
        matches(&self.namespaces, ns.as_str())
            && self
                .permissions
                .iter()
                .any(|p| *p == perm || *p == Permission::Admin)
    }

    /// Parses the command-line form `NAMESPACES:PERM[,PERM...][:REFPREFIX[,REFPREFIX...]]`,
    /// e.g. `prod:read,record` or `prod:write,ref:bar/,build/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        let namespaces = parts.next().unwrap_or_default().trim().to_string();
        let perms = parts.next().ok_or_else(|| {
            format!("grant {text:?}: expected NAMESPACES:PERMISSIONS[:REF-PREFIXES]")
        })?;
        if namespaces.is_empty() {
            return Err(format!("grant {text:?}: the namespace pattern is empty"));
        }
        let permissions = perms
            .split(',')
            .map(|p| {
                serde_json::from_value::<Permission>(serde_json::Value::String(p.trim().into()))
                    .map_err(|_| {
                        format!(
                            "grant {text:?}: {p:?} is not a permission (read, write, ref, record, invalidate, admin)"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs = parts
            .next()
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Grant {
            namespaces,
            permissions,
            refs,
        })
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// No credentials on a server without an auth configuration: every call allowed.
    Open,
    /// No credentials on a server with one: the configuration's anonymous grants.
    Anonymous,
    /// A verified token or client certificate.
    Verified,
}

/// The caller of one request, resolved once in front of the services.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Who, as audit records name it: `token:alice`, `github:repo:org/x:environment:release`,
    /// `cert:CN=...`, `anonymous`.
    pub identity: String,
    pub grants: Vec<Grant>,
    pub authentication: Authentication,
    /// When its credentials expire (ms since the epoch), 0 for never.
    pub expires_at_ms: i64,
}

impl Principal {
    /// The caller of a server with no auth configuration.
    pub fn open() -> Self {
        Principal {
            identity: "anonymous".into(),
            grants: vec![Grant {
                namespaces: "*".into(),
                permissions: vec![Permission::Admin],
                refs: Vec::new(),
            }],
            authentication: Authentication::Open,
            expires_at_ms: 0,
        }
    }

    pub fn anonymous(grants: Vec<Grant>) -> Self {
        Principal {
            identity: "anonymous".into(),
            grants,
            authentication: Authentication::Anonymous,
            expires_at_ms: 0,
        }
    }

    pub fn allows(&self, perm: Permission, ns: &Namespace) -> bool {
        self.grants.iter().any(|g| g.covers(perm, ns))
    }

    /// Whether some grant gives `read` in some namespace (pages outside one namespace).
    pub fn reads_somewhere(&self) -> bool {
        self.grants.iter().any(|g| {
            g.permissions
                .iter()
                .any(|p| *p == Permission::Read || *p == Permission::Admin)
        })
    }

    /// The refusal of `what` for this caller: UNAUTHENTICATED without credentials,
    /// PERMISSION_DENIED naming the identity otherwise.
    pub fn denied(&self, what: &str) -> Status {
        if let Some(m) = crate::metrics::metrics() {
            m.auth.with_label_values(&["denied"]).inc();
        }
        if self.authentication == Authentication::Anonymous {
            Status::unauthenticated(format!(
                "no credentials: {what} needs a token (--token, STAGECACHE_TOKEN or --token-from)"
            ))
        } else {
            Status::permission_denied(format!("{} may not {what}", self.identity))
        }
    }

    /// `Ok` when some grant gives `perm` in `ns`; otherwise PERMISSION_DENIED naming the
    /// identity, permission and namespace (UNAUTHENTICATED for a caller without
    /// credentials).
    pub fn check(&self, perm: Permission, ns: &Namespace) -> Result<(), Status> {
        if self.allows(perm, ns) {
            return Ok(());
        }
        Err(self.denied(&format!("{} in namespace {ns}", perm.word())))
    }

    /// `Ok` when a grant for every namespace (pattern `*`) gives `perm`: actions that
    /// reach across namespaces (a garbage collection).
    /// `ns` is where the call was made, for the message.
    pub fn check_everywhere(&self, perm: Permission, ns: &Namespace) -> Result<(), Status> {
        let ok = self.grants.iter().any(|g| {
            g.namespaces == "*"
                && g.permissions
                    .iter()
                    .any(|p| *p == perm || *p == Permission::Admin)
        });
        if ok {
            return Ok(());
        }
        Err(self.denied(&format!(
            "{} in every namespace (needs a grant for namespaces \"*\"; asked in namespace {ns})",
            perm.word()
        )))
    }

    /// `Ok` when some grant gives `ref` in `ns` on a prefix of `name`.
    pub fn check_ref(&self, ns: &Namespace, name: &str) -> Result<(), Status> {
        let ok = self.grants.iter().any(|g| {
            g.covers(Permission::Ref, ns)
                && (g.refs.is_empty() || g.refs.iter().any(|p| name.starts_with(p.as_str())))
        });
        if ok {
            return Ok(());
        }
        Err(self.denied(&format!("move ref {name:?} in namespace {ns} (needs ref)")))
    }

    /// The identity audit records carry.
    pub fn audit_identity(&self) -> &str {
        &self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse("namespace", s).unwrap()
    }

    #[test]
    fn grants_cover_namespaces_permissions_and_ref_prefixes() {
        let p = Principal {
            identity: "token:prep".into(),
            grants: vec![
                Grant::parse("prod:read,write,ref:bar/,build/").unwrap(),
                Grant::parse("test*:admin").unwrap(),
            ],
            authentication: Authentication::Verified,
            expires_at_ms: 0,
        };
        assert!(p.check(Permission::Write, &ns("prod")).is_ok());
        assert!(p.check(Permission::Record, &ns("prod")).is_err());
        assert!(p.check(Permission::Invalidate, &ns("test-1")).is_ok());
        assert!(p.check_ref(&ns("prod"), "bar/12345").is_ok());
        assert!(p.check_ref(&ns("prod"), "build/1").is_ok());
        let e = p.check_ref(&ns("prod"), "release/1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("token:prep") && e.message().contains("release/1"));
        let e = p.check(Permission::Record, &ns("prod")).unwrap_err();
        assert!(e.message().contains("record in namespace prod"), "{e:?}");
        let anon = Principal::anonymous(vec![Grant::parse("*:read").unwrap()]);
        assert!(anon.check(Permission::Read, &ns("prod")).is_ok());
        assert_eq!(
            anon.check(Permission::Record, &ns("prod"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(Principal::open().check_ref(&ns("x"), "any").is_ok());
        assert!(Grant::parse("prod").is_err());
        assert!(Grant::parse("prod:fly").unwrap_err().contains("\"fly\""));
    }
}
