//! The few pieces every page is made of: escaping (every interpolated string goes through
//! [`esc`] or a URL encoder), the page frame with its inline style (no scripts, fonts or
//! anything else from the network), sizes and times.

use std::fmt::Write;

/// Text made safe for HTML element content and quoted attribute values.
/// Who did something, escaped: the authenticated identity, and the actor the client
/// named as whom it acted for (`token:prep (for release-bot)`); the actor alone on an open
/// server or for records made before identities existed.
pub fn who(actor: &str, identity: &str) -> String {
    match (identity, actor) {
        ("" | "anonymous", _) => esc(actor),
        (id, "") => esc(id),
        (id, a) if id == a => esc(id),
        (id, a) => format!("{} (for {})", esc(id), esc(a)),
    }
}

pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    push_esc(&mut out, text);
    out
}

/// Appends `text` escaped (`&`, `<`, `>`, `"`, `'`).
pub fn push_esc(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Percent-encodes one path segment or query value (everything but unreserved bytes).
pub fn url_part(text: &str) -> String {
    encode(text, false)
}

/// Percent-encodes a path that keeps its `/` separators (a ref name, a file path).
pub fn url_path(text: &str) -> String {
    encode(text, true)
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An `<a>` with an escaped href and escaped text.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// `1.5 MiB`-style size with the exact byte count in a title.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("<span title=\"{n} bytes\">{n} B</span>")
    } else {
        format!("<span title=\"{n} bytes\">{v:.1} {}</span>", UNITS[u])
    }
}

/// A time in UTC, as the CLI prints it.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    esc(&stagecache_proto::time::format_time(ms))
}

/// A whole page: title (escaped here), navigation, the body given as HTML.
pub fn page(title: &str, namespace: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(out, "<title>{} · stagecache</title>", esc(title));
    out.push_str(STYLE);
    out.push_str("</head><body><nav><a href=\"/\">stagecache</a>");
    if let Some(ns) = namespace {
        let _ = write!(
            out,
            " · namespace {} · {}",
            esc(ns),
            link(&format!("/ns/{}/builds", url_part(ns)), "builds")
        );
    }
    out.push_str("</nav><main>");
    let _ = write!(out, "<h1>{}</h1>", esc(title));
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

const STYLE: &str = "<style>
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;background:#fff}
nav{background:#24292f;color:#d0d7de;padding:8px 16px}nav a{color:#fff;font-weight:600}
main{padding:8px 16px 32px}h1{font-size:20px;margin:8px 0 12px;word-break:break-all}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;margin:4px 0}th,td{border-bottom:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}code,.digest{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.state{display:inline-block;padding:0 6px;border-radius:10px;border:1px solid;font-size:12px}
.added{background:#dafbe1}.removed{background:#ffebe9}.changed{background:#fff8c5}
.error{border:1px solid #cf222e;background:#ffebe9;padding:8px 12px}
form{margin:8px 0}div.graph{overflow-x:auto;border:1px solid #d8dee4}svg{display:block;background:#fff}
</style>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
        let p = page("<script>", Some("a&b"), "");
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains("&lt;script&gt;") && p.contains("a&amp;b"));
    }

    #[test]
    fn encodes_urls() {
        assert_eq!(
            url_part("Publish Signed/Assets"),
            "Publish%20Signed%2FAssets"
        );
        assert_eq!(url_path("bar/1 2"), "bar/1%202");
        assert_eq!(url_part("a\"<&"), "a%22%3C%26");
        assert_eq!(
            link("/x?a=1&b=2", "<b>"),
            "<a href=\"/x?a=1&amp;b=2\">&lt;b&gt;</a>"
        );
    }

    #[test]
    fn sizes_and_times() {
        assert!(bytes(512).contains(">512 B<"));
        assert!(bytes(3 * 1024 * 1024 / 2).contains(">1.5 MiB<"));
        assert_eq!(time(0), "-");
    }
}
