//! stagecache-view: views of stagecache data, computed once here and rendered by the CLI
//! (`stagecache status`, `graph`, `diff`, ...) and by the server's web page: one stage
//! result as a line or JSON, the table of a stage graph, the graph's stage states and its
//! Mermaid text, the difference between two manifests, and stage graph files.
//!
//! It knows the wire types (`stagecache-proto`) and nothing of networking, storage or
//! HTML: renderers for people live with their callers.

pub mod diff;
pub mod graph;
pub mod result;
pub mod stages;
pub mod table;

pub use diff::{diff_manifests, Change, FileDiff, ManifestDiff};
pub use graph::{mermaid, stage_state, StageState};
pub use result::{digest_of, result_json, result_line, status_name};
pub use table::stage_table;
