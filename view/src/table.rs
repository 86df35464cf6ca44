//! Every stage of a graph as a table row: state, attempt, build, duration.

use crate::result::status_name;
use crate::stages::StageFile;
use stagecache_proto::v1::StageResult;

/// One row per stage of the graph, in the file's order; stages without a stage-level
/// result are "not run".
pub fn stage_table(file: &StageFile, results: &[StageResult]) -> String {
    let width = file
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:<11} {:>7}  {:<12} {:>9}\n",
        "stage", "state", "attempt", "build", "duration"
    );
    for s in &file.stages {
        let r = results
            .iter()
            .find(|r| r.stage == s.name && r.target.is_empty());
        let (state, attempt, build, duration) = match r {
            None => (
                "not run".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            Some(r) => {
                let build = if r.build_id.is_empty() {
                    r.bar_build_id.clone()
                } else {
                    r.build_id.clone()
                };
                (
                    status_name(r.status).to_string(),
                    r.attempt.to_string(),
                    build,
                    duration(r),
                )
            }
        };
        out.push_str(&format!(
            "{:<width$}  {state:<11} {attempt:>7}  {build:<12} {duration:>9}\n",
            s.name
        ));
    }
    out
}

/// `1h02m03s` from start to finish, `-` while it runs.
pub fn duration(r: &StageResult) -> String {
    if r.finished_at_ms <= 0 {
        return "-".into();
    }
    let secs = ((r.finished_at_ms - r.started_at_ms) / 1000).max(0);
    format!("{}h{:02}m{:02}s", secs / 3600, secs % 3600 / 60, secs % 60)
}
