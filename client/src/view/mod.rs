//! Views of ledger data, computed once here and rendered by the CLI (and anything else
//! that shows them): one stage result as a line or JSON, the table of a stage graph, the
//! graph as a Mermaid flowchart.

pub mod graph;
pub mod result;
pub mod table;

pub use graph::{mermaid, stage_state, StageState};
pub use result::{digest_of, result_json, result_line, status_name};
pub use table::stage_table;
