//! One stage result, as a line for people and as JSON for scripts.

use serde_json::json;
use stagecache_proto::time::format_time;
use stagecache_proto::v1::{self, StageResult, StageStatus};

/// `HASH/SIZE` of a wire digest, or `-` when absent.
pub fn digest_of(d: &Option<v1::Digest>) -> String {
    d.as_ref()
        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_else(|| "-".into())
}

/// The word for a stage status code: `succeeded`, `failed`, ...
pub fn status_name(code: i32) -> &'static str {
    StageStatus::try_from(code)
        .unwrap_or(StageStatus::Unspecified)
        .word()
}

/// A result as the JSON object the CLI prints (`--json`).
pub fn result_json(r: &StageResult) -> serde_json::Value {
    json!({
        "subject": digest_of(&r.subject),
        "stage": r.stage,
        "target": r.target,
        "fingerprint": r.fingerprint,
        "status": status_name(r.status),
        "attempt": r.attempt,
        "bar_build_id": r.bar_build_id,
        "build_id": r.build_id,
        "run_url": r.run_url,
        "actor": r.actor,
        "outputs": r.outputs.as_ref().map(|_| digest_of(&r.outputs)),
        "started_at": format_time(r.started_at_ms),
        "finished_at": (r.finished_at_ms > 0).then(|| format_time(r.finished_at_ms)),
        "reason": r.reason,
        "seq": r.seq,
    })
}

/// `succeeded    Publish [target] attempt 2 at ... BAR 1 build 2 outputs ... by who: why`
pub fn result_line(r: &StageResult) -> String {
    let mut s = format!(
        "{:<12} {}{} attempt {} at {}",
        status_name(r.status),
        r.stage,
        if r.target.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.target)
        },
        r.attempt,
        format_time(if r.finished_at_ms > 0 {
            r.finished_at_ms
        } else {
            r.started_at_ms
        })
    );
    if !r.bar_build_id.is_empty() {
        s.push_str(&format!(" BAR {}", r.bar_build_id));
    }
    if !r.build_id.is_empty() {
        s.push_str(&format!(" build {}", r.build_id));
    }
    if r.outputs.is_some() {
        s.push_str(&format!(" outputs {}", digest_of(&r.outputs)));
    }
    if !r.actor.is_empty() {
        s.push_str(&format!(" by {}", r.actor));
    }
    if !r.reason.is_empty() {
        s.push_str(&format!(": {}", r.reason));
    }
    s
}
