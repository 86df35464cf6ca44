//! The server's configuration file (`--config stagecache.toml`): every setting the flags
//! have, so a deployment is one reviewed file. A flag beats its environment variable,
//! which beats the file, which beats the built-in default. Unknown keys are refused,
//! naming the key and the file. `deploy/stagecache.example.toml` is the commented example
//! (a test parses it).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `--config FILE` may set; absent keys leave the flag's default.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub blob_store: Option<String>,
    /// Options of a cloud blob store (`azure_storage_account_name`, `aws_region`,
    /// `google_service_account`, ...), as the `AZURE_*`, `AWS_*` and `GOOGLE_*`
    /// environment variables give them; the environment wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blob_store_options: BTreeMap<String, String>,
    pub web_listen: Option<SocketAddr>,
    pub web_stage_files: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub auth_config: Option<PathBuf>,
    pub insecure_open: Option<bool>,
    pub take_over: Option<bool>,
    pub direct_downloads: Option<bool>,
    /// `1h`, `30m` or seconds.
    pub direct_download_ttl: Option<String>,
    /// `500GiB`, `2TB` or bytes.
    pub max_bytes: Option<String>,
    /// `1GiB`, `0` or bytes.
    pub min_free_space: Option<String>,
    pub tls: Option<TlsFile>,
    pub retention: Option<RetentionFile>,
    pub scrub: Option<ScrubFile>,
    /// A local read-through tier's directory, in front of a cloud blob store.
    pub local_tier: Option<PathBuf>,
    /// `100GiB`: the most the local tier holds.
    pub local_tier_max_bytes: Option<String>,
    /// `64MiB`, `0` (off) or bytes: the ledger heads cache.
    pub ledger_cache: Option<String>,
    /// `8MiB`, `0` (none) or bytes: blobs at least this large bypass the page cache on a
    /// local blob store.
    pub direct_io: Option<String>,
}

/// `[scrub]`: a periodic re-hash of every stored blob.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrubFile {
    /// `7d`: scrub this often (absent: no periodic scrub).
    pub interval: Option<String>,
    /// `50MiB`: the most it reads a second.
    pub rate: Option<String>,
}

/// `[retention]`: what garbage collection keeps, and how often it runs.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// `24h`: anything uploaded (or asked for by a register) this recently stays.
    pub grace: Option<String>,
    /// `1h`: collect this often (absent: only when asked, or when the store is full).
    pub gc_interval: Option<String>,
    /// `["test*=7d", "prod=90d"]`: refs of a namespace matching the pattern expire this
    /// long after their last change unless pinned; first match wins; `never` keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ref_expiry: Vec<String>,
}

/// `[tls]`: the gRPC port's certificate, key and, for mutual TLS, the client CA.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_optional: Option<bool>,
}

/// Prefixes of the cloud options a blob store understands.
const OPTION_PREFIXES: [&str; 3] = ["azure_", "aws_", "google_"];

impl FileConfig {
    /// Reads and checks `path`: TOML, known keys only, values of the right kind.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--config {}: {e}", path.display()))
    }

    /// Parses a configuration's text (see [`FileConfig::load`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: FileConfig = toml::from_str(text).map_err(|e| one_line(text, &e))?;
        for key in config.blob_store_options.keys() {
            if !OPTION_PREFIXES.iter().any(|p| key.starts_with(p)) {
                return Err(format!(
                    "blob_store_options: unknown key {key:?}: keys start with azure_, aws_ or google_"
                ));
            }
        }
        if let Some(f) = &config.log_format {
            if f != "text" && f != "json" {
                return Err(format!("log_format {f:?}: expected \"text\" or \"json\""));
            }
        }
        if let Some(t) = &config.direct_download_ttl {
            let secs = parse_duration(t).map_err(|e| format!("direct_download_ttl {e}"))?;
            if secs > 7 * 86_400 {
                return Err(format!(
                    "direct_download_ttl {t:?}: at most 7d (S3 and GCS refuse signed URLs valid longer)"
                ));
            }
        }
        for (key, value) in [
            ("max_bytes", &config.max_bytes),
            ("min_free_space", &config.min_free_space),
            ("local_tier_max_bytes", &config.local_tier_max_bytes),
            ("ledger_cache", &config.ledger_cache),
            ("direct_io", &config.direct_io),
        ] {
            if let Some(v) = value {
                crate::store::space::parse_size(v).map_err(|e| format!("{key} {e}"))?;
            }
        }
        if let Some(r) = &config.retention {
            for (key, value) in [("grace", &r.grace), ("gc_interval", &r.gc_interval)] {
                if let Some(v) = value {
                    parse_duration(v).map_err(|e| format!("[retention] {key} {e}"))?;
                }
            }
            for e in &r.ref_expiry {
                crate::store::gc::Retention::parse_expiry(e)
                    .map_err(|e| format!("[retention] ref_expiry: {e}"))?;
            }
        }
        if let Some(sc) = &config.scrub {
            if let Some(v) = &sc.interval {
                parse_duration(v).map_err(|e| format!("[scrub] interval {e}"))?;
            }
            if let Some(v) = &sc.rate {
                crate::store::space::parse_size(v).map_err(|e| format!("[scrub] rate {e}"))?;
            }
        }
        if let Some(tls) = &config.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err("[tls]: give both cert and key, or neither".into());
            }
            if tls.client_ca.is_some() && tls.cert.is_none() {
                return Err("[tls]: client_ca needs cert and key".into());
            }
        }
        Ok(config)
    }

    /// The configuration as TOML, with the values of secret-looking blob-store options
    /// (keys, secrets, tokens, passwords, SAS) replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (k, v) in shown.blob_store_options.iter_mut() {
            if is_secret(k) {
                *v = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// A TOML error as one line naming where and which key: `line 2: [tls] kye: unknown
/// field ...` (toml's own rendering spans several lines and names the key only in its
/// snippet of the file).
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
    let key = line.split('=').next().unwrap_or_default().trim();
    // Inside a table: name it too.
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    match table {
        Some(t) if !key.starts_with('[') => format!("line {line_no}: {t} {key}: {message}"),
        _ => format!("line {line_no}: {key}: {message}"),
    }
}

/// `90d`, `12h`, `30m`, `45s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 90d, 12h, 30m or seconds"))?;
    let unit = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(format!("{s:?}: the unit must be d, h, m or s")),
    };
    if n <= 0 {
        return Err(format!("{s:?}: must be positive"));
    }
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// Whether a cloud option's value is a credential.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "secret", "token", "password", "sas", "credential"]
        .iter()
        .any(|w| k.contains(w))
        && !k.ends_with("_name")
        && !k.ends_with("_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_parses_and_says_what_it_sets() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stagecache.example.toml");
        let c = FileConfig::load(&path).unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:50051".parse().unwrap()));
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(c.log_format.as_deref(), Some("json"));
        assert!(c.blob_store.as_deref().unwrap().starts_with("az://"));
        assert!(c.auth_config.is_some());
        let scrub = c.scrub.unwrap();
        assert_eq!(scrub.interval.as_deref(), Some("7d"));
        assert_eq!(scrub.rate.as_deref(), Some("50MiB"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = FileConfig::parse("listen = \"127.0.0.1:1\"\nlisten_port = 5\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = FileConfig::parse("[tls]\ncert = \"a\"\nkye = \"b\"\n").unwrap_err();
        assert!(e.contains("kye"), "{e}");
        let e = FileConfig::parse("listen = \"nowhere\"\n").unwrap_err();
        assert!(e.starts_with("line 1: listen: "), "{e}");
        let e =
            FileConfig::parse("log = \"info\"\n[tls]\ncert = \"a\"\nkye = \"b\"\n").unwrap_err();
        assert!(e.starts_with("line 4: [tls] kye: unknown field"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = FileConfig::parse("[scrub]\nrate = \"fast\"\n").unwrap_err();
        assert!(e.starts_with("[scrub] rate"), "{e}");
        let e = FileConfig::parse("log_format = \"xml\"\n").unwrap_err();
        assert!(e.contains("xml"), "{e}");
        let e = FileConfig::parse("[blob_store_options]\nregion = \"x\"\n").unwrap_err();
        assert!(e.contains("region"), "{e}");
        let e = FileConfig::parse("[tls]\ncert = \"a\"\n").unwrap_err();
        assert!(e.contains("key"), "{e}");
        for ttl in ["1hm", "0", "8d", "soon"] {
            let e = FileConfig::parse(&format!("direct_download_ttl = \"{ttl}\"\n")).unwrap_err();
            assert!(e.contains("direct_download_ttl"), "{ttl}: {e}");
        }
        FileConfig::parse("direct_download_ttl = \"7d\"\nmax_bytes = \"2TiB\"\n").unwrap();
        let e = FileConfig::parse("ledger_cache = \"lots\"\n").unwrap_err();
        assert!(e.starts_with("ledger_cache"), "{e}");
        let c = FileConfig::parse("ledger_cache = \"0\"\ndirect_io = \"16MiB\"\n").unwrap();
        assert_eq!(
            (c.ledger_cache.as_deref(), c.direct_io.as_deref()),
            (Some("0"), Some("16MiB"))
        );
        let e = FileConfig::parse("direct_io = \"big\"\n").unwrap_err();
        assert!(e.starts_with("direct_io"), "{e}");
        let r = FileConfig::parse(
            "[retention]\ngrace = \"12h\"\ngc_interval = \"1h\"\nref_expiry = [\"test*=7d\", \"*=never\"]\n",
        )
        .unwrap()
        .retention
        .unwrap();
        assert_eq!(r.ref_expiry, ["test*=7d", "*=never"]);
        for (bad, named) in [
            ("ref_expiry = [\"prod\"]", "ref_expiry"),
            ("ref_expiry = [\"prod=0d\"]", "positive"),
            ("ref_expiry = [\"=7d\"]", "pattern is empty"),
            ("grace = \"soon\"", "grace"),
            ("gc_interval = \"1x\"", "gc_interval"),
            ("keep = true", "keep"),
        ] {
            let e = FileConfig::parse(&format!("[retention]\n{bad}\n")).unwrap_err();
            assert!(e.contains(named) && e.contains("retention"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let c = FileConfig::parse(
            "blob_store = \"az://c/p\"\n[blob_store_options]\nazure_storage_account_name = \"contoso\"\nazure_storage_account_key = \"c2VjcmV0\"\nazure_storage_sas_key = \"sv=1&sig=abc\"\n",
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(shown.contains("contoso"), "{shown}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("sig=abc"),
            "{shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
        // What is printed reads back.
        let back = FileConfig::parse(&shown).unwrap();
        assert_eq!(back.blob_store, c.blob_store);
    }
}
