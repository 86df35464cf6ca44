//! Azurite, the Azure Blob Storage emulator (npm `azurite`, installed by `scripts/ci-deps`
//! under `~/.cache/stagecache/tools`), started by a test on a port the kernel chooses, with
//! a container made for it. The server reaches it through object_store's own emulator
//! support (`AZURE_STORAGE_USE_EMULATOR`, `AZURITE_BLOB_STORAGE_URL`), as a deployment on
//! Azure Blob would through its account.

use base64::Engine;
use std::path::PathBuf;
use std::process::{Child, Command};

/// The emulator's well-known development account and key (public; Azurite's defaults).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where `azurite-blob` is: `STAGECACHE_AZURITE`, else where `scripts/ci-deps` puts it.
pub fn azurite_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAGECACHE_AZURITE") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/stagecache/tools/node_modules/.bin/azurite-blob");
    p.exists().then_some(p)
}

/// A running Azurite blob service: started by a test (killed on drop), or already running
/// ([`Azurite::at`]).
pub struct Azurite {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Azurite {
    /// Starts Azurite, or `None` when it is not installed — which fails the test under CI
    /// (`CI` set), where `.ci/run` installs it.
    pub fn start() -> Option<Self> {
        let Some(bin) = azurite_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "Azurite is not installed (scripts/ci-deps installs it); CI must run the Azure tests"
            );
            eprintln!("SKIPPED: Azurite is not installed; run scripts/ci-deps");
            return None;
        };
        let dir = tempfile::tempdir().expect("azurite dir");
        let (child, url) = crate::spawn_announcing(
            Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
                .arg(dir.path())
                .args([
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                    "--silent",
                ]),
            "listens on ",
            false,
        );
        Some(Azurite {
            child: Some(child),
            url,
            _dir: Some(dir),
        })
    }

    /// An Azurite someone else started and stops, at `url`.
    pub fn at(url: &str) -> Self {
        Azurite {
            child: None,
            url: url.trim_end_matches('/').to_string(),
            _dir: None,
        }
    }

    /// The environment a server needs to use this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
        ]
    }

    /// object_store options that reach this emulator from the test process itself, as an
    /// Azure account at an endpoint of its own (the server's emulator settings come from
    /// its environment, which a test cannot change for its own process).
    pub fn store_options(&self) -> Vec<(String, String)> {
        vec![
            ("azure_storage_account_name".into(), ACCOUNT.into()),
            ("azure_storage_account_key".into(), KEY.into()),
            (
                "azure_storage_endpoint".into(),
                format!("{}/{ACCOUNT}", self.url),
            ),
            ("azure_allow_http".into(), "true".into()),
        ]
    }

    /// Creates a container (Blob service REST, Shared Key signed).
    pub async fn create_container(&self, name: &str) {
        let (status, body) = self.put_container(name).await;
        assert!(
            status.is_success(),
            "create container {name}: {status} {body}"
        );
    }

    /// Creates a container unless it exists.
    pub async fn ensure_container(&self, name: &str) {
        let (status, body) = self.put_container(name).await;
        assert!(
            status.is_success() || status == reqwest::StatusCode::CONFLICT,
            "create container {name}: {status} {body}"
        );
    }

    async fn put_container(&self, name: &str) -> (reqwest::StatusCode, String) {
        self.signed_put(
            &format!("{name}?restype=container"),
            &format!("{name}\nrestype:container"),
            &[],
            Vec::new(),
            "create container",
        )
        .await
    }

    /// A PUT of `/{ACCOUNT}/{path}` signed with the emulator's Shared Key. `resource` is
    /// the canonicalized resource after `/{ACCOUNT}/{ACCOUNT}/`; `headers` are `x-ms-*`
    /// headers besides the date and version, in name order. Returns the answer's status
    /// and body.
    async fn signed_put(
        &self,
        path: &str,
        resource: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        what: &str,
    ) -> (reqwest::StatusCode, String) {
        let date = http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut canonical_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        canonical_headers.push(("x-ms-date".into(), date.clone()));
        canonical_headers.push(("x-ms-version".into(), version.into()));
        canonical_headers.sort();
        let header_lines: String = canonical_headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}\n"))
            .collect();
        let to_sign = format!(
            "PUT\n\n\n{length}\n\n\n\n\n\n\n\n\n{header_lines}/{ACCOUNT}/{ACCOUNT}/{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("key");
        let mac = jsonwebtoken::crypto::sign(
            to_sign.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(&key),
            jsonwebtoken::Algorithm::HS256,
        )
        .expect("HMAC");
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(mac)
            .expect("HMAC bytes");
        let signature = base64::engine::general_purpose::STANDARD.encode(mac);
        let mut request = reqwest::Client::new()
            .put(format!("{}/{ACCOUNT}/{path}", self.url))
            .header("content-length", body.len().to_string())
            .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"));
        for (k, v) in &canonical_headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let response = request
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `Sat, 28 Nov 2026 13:22:00 GMT` (RFC 1123, as `x-ms-date` wants it), from the
/// project's RFC 3339 formatting.
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    // `2026-11-28T13:22:00Z`
    let rfc3339 = stagecache_proto::time::format_time(secs * 1000);
    let (date, time) = rfc3339.split_once('T').expect("RFC 3339");
    let mut parts = date.split('-');
    let (year, month, day) = (
        parts.next().unwrap_or_default(),
        parts
            .next()
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(1),
        parts.next().unwrap_or_default(),
    );
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        [secs.div_euclid(86_400).rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day} {} {year} {} GMT",
        months[month - 1],
        time.trim_end_matches('Z')
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_872_120);
        assert_eq!(super::http_date(t), "Sat, 28 Nov 2026 13:22:00 GMT");
        assert_eq!(
            super::http_date(std::time::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
