//! The results data model: one [`Row`] per configuration, one [`RunFile`]
//! per sweep (`results/runs/*.json`, `results/latest.json`) ([`row`]), and
//! reading and writing those files ([`files`]). The sweep writes them,
//! `attn report` reads them.

pub mod files;
pub mod row;

pub use files::{load, workspace_root, write_run};
pub use row::{BIAS_READS, LayerSplit, Row, RunFile, SCHEMA, Status};
