//! Kestrel's stored scenarios and their snapshot harness (issue 5).
//!
//! A scenario (`scenarios/<name>.toml`) says what to boot and what to run;
//! a run through a [`Backend`] (the `kestrel` VMM) yields a [`RunOutput`];
//! [`evaluate()`] turns it into a [`Verdict`], comparing normalised output with
//! an insta-format snapshot. [`run_suite`] does it for every scenario ×
//! kernel and writes artifacts, JUnit XML and a summary table.
//!
//! Module map:
//! - [`scenario`]: the file format and its validation.
//! - [`kernel`]: kernel specs, patterns, series, slugs.
//! - [`ktap`]: KTAP/TAP parsing and the rendered result tree.
//! - [`redact`]: normalisation (built-in redactions, user filters).
//! - [`snapshot`]: insta's file format, comparison, `.snap.new`, accepting.
//! - [`evaluate`]: run output + expectations → verdict.
//! - [`trace`]: the splat behind a forbidden kernel-log line, symbolized.
//! - [`backend`]: the runner contract and the `kestrel` binary backend.
//! - [`report`]: per-case artifacts, JUnit XML, the summary table.
//! - [`suite`]: options, cases, probes, `run_suite`.
//! - [`matrix`]: scenario × kernel verdicts, differences, the ABI reports.

pub mod backend;
pub mod bisect;
pub mod error;
pub mod evaluate;
pub mod kernel;
pub mod ktap;
pub mod matrix;
pub mod redact;
pub mod report;
pub mod scenario;
pub mod snapshot;
pub mod suite;
pub mod trace;

pub use backend::{Backend, BackendError, KestrelBinary, ResolvedKernel, RunRequest};
pub use error::{Error, Result};
pub use evaluate::{evaluate, FailReason, RunOutput, RunnerVerdict, Verdict};
pub use report::CaseResult;
pub use scenario::Scenario;
pub use suite::{run_suite, Case, Session, SuiteOptions, Summary};
