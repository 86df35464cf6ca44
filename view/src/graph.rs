//! A stage graph coloured by each stage's state for a subject.

use crate::stages::StageFile;
use stagecache_proto::v1::{StageResult, StageStatus};

/// How a stage is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Succeeded in the latest run.
    Succeeded,
    /// Its success was reused from an earlier run (another build id than the latest).
    Skipped,
    Failed,
    Running,
    NotRun,
}

impl StageState {
    /// The class name used in the Mermaid output and in pages.
    pub fn class(self) -> &'static str {
        match self {
            StageState::Succeeded => "succeeded",
            StageState::Skipped => "skipped",
            StageState::Failed => "failed",
            StageState::Running => "running",
            StageState::NotRun => "notrun",
        }
    }

    /// (fill, stroke, text) colours, shared by every rendering of the graph.
    pub fn colours(self) -> (&'static str, &'static str, &'static str) {
        match self {
            StageState::Succeeded => ("#2da44e", "#1a7f37", "#fff"),
            StageState::Skipped => ("#ddf4ff", "#54aeff", "#0969da"),
            StageState::Failed => ("#cf222e", "#a40e26", "#fff"),
            StageState::Running => ("#bf8700", "#9a6700", "#fff"),
            StageState::NotRun => ("#f6f8fa", "#8c959f", "#57606a"),
        }
    }

    pub const ALL: [StageState; 5] = [
        StageState::Succeeded,
        StageState::Skipped,
        StageState::Failed,
        StageState::Running,
        StageState::NotRun,
    ];
}

/// The build id of the most recent result: successes from other builds were reused.
pub fn latest_build(results: &[StageResult]) -> String {
    results
        .iter()
        .max_by_key(|r| r.seq)
        .map(|r| r.build_id.clone())
        .unwrap_or_default()
}

/// The state of `stage` given a subject's effective results.
pub fn stage_state(stage: &str, results: &[StageResult], latest_build: &str) -> StageState {
    let Some(r) = results
        .iter()
        .find(|r| r.stage == stage && r.target.is_empty())
    else {
        return StageState::NotRun;
    };
    match StageStatus::try_from(r.status).unwrap_or(StageStatus::Unspecified) {
        StageStatus::Succeeded if !latest_build.is_empty() && r.build_id != latest_build => {
            StageState::Skipped
        }
        StageStatus::Succeeded => StageState::Succeeded,
        StageStatus::Failed | StageStatus::Cancelled => StageState::Failed,
        StageStatus::Started => StageState::Running,
        _ => StageState::NotRun,
    }
}

/// A Mermaid flowchart of the graph, stages coloured by state.
pub fn mermaid(file: &StageFile, results: &[StageResult]) -> String {
    let latest = latest_build(results);
    let id = |name: &str| {
        file.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| format!("s{i}"))
    };
    let mut out = String::from("flowchart TD\n");
    for (i, s) in file.stages.iter().enumerate() {
        let label = s.name.replace('"', "#quot;");
        out.push_str(&format!(
            "    s{i}[\"{label}\"]:::{}\n",
            stage_state(&s.name, results, &latest).class()
        ));
    }
    for (i, s) in file.stages.iter().enumerate() {
        for d in &s.depends_on {
            if let Some(from) = id(d) {
                out.push_str(&format!("    {from} --> s{i}\n"));
            }
        }
    }
    for state in StageState::ALL {
        let (fill, stroke, color) = state.colours();
        out.push_str(&format!(
            "    classDef {} fill:{fill},stroke:{stroke},color:{color}\n",
            state.class()
        ));
    }
    out
}
