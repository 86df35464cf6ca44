//! Client certificates (mutual TLS) as identities. The TLS layer has already checked that
//! the certificate chains to `--tls-client-ca`; here its names — the subject's common name
//! and every DNS, URI and e-mail subject alternative name — are matched against the
//! configuration's `[[certificates]]` rules, and the caller gets the grants of every rule
//! one of its names matches. The identity audit records carry is `cert:<first matching
//! name>` (or `cert:<common name>` when no rule matched: such a caller has no grants).

use super::config::CertificateRule;
use super::pattern::matches;
use super::principal::{Authentication, Principal};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a certificate presents: common names first, then subject alternative names.
/// `Err` when the DER does not parse (the TLS layer accepted it, so this is rare).
pub fn names(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("client certificate: cannot read it: {e}"))?;
    let mut out: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    out.push(s.to_string())
                }
                _ => {}
            }
        }
    }
    let not_after_ms = cert.validity().not_after.timestamp().saturating_mul(1000);
    Ok((out, not_after_ms))
}

/// The principal of a verified client certificate under `rules`.
pub fn principal(der: &[u8], rules: &[CertificateRule]) -> Result<Principal, String> {
    let (names, not_after_ms) = names(der)?;
    let Some(first) = names.first() else {
        return Err(
            "client certificate: has neither a common name nor a DNS, URI or e-mail name".into(),
        );
    };
    let mut identity = None;
    let mut grants = Vec::new();
    for rule in rules {
        if let Some(n) = names.iter().find(|n| matches(&rule.subject, n)) {
            identity.get_or_insert_with(|| n.clone());
            grants.extend(rule.grants.iter().cloned());
        }
    }
    Ok(Principal {
        identity: format!("cert:{}", identity.unwrap_or_else(|| first.clone())),
        grants,
        authentication: Authentication::Verified,
        expires_at_ms: not_after_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grant;

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_map_to_grants() {
        let rules = vec![
            CertificateRule {
                subject: "release-agent-*".into(),
                grants: vec![Grant::parse("prod:read,record").unwrap()],
            },
            CertificateRule {
                subject: "*.build.example".into(),
                grants: vec![Grant::parse("test:write").unwrap()],
            },
        ];
        let p = principal(&cert("release-agent-7", &["agent7.build.example"]), &rules).unwrap();
        assert_eq!(p.identity, "cert:release-agent-7");
        assert_eq!(p.grants.len(), 2);
        assert!(p.expires_at_ms > 0);
        let p = principal(&cert("laptop", &["laptop.corp.example"]), &rules).unwrap();
        assert_eq!(p.identity, "cert:laptop");
        assert!(p.grants.is_empty());
    }
}
