//! The daily operations report: `paygate report --date YYYY-MM-DD [--format html|md|csv]
//! [--out FILE] [--journal PATH | --journal-url postgres://... [--journal-schema NAME]]`.
//!
//! Owns reading one UTC day out of the journal (`journal`), the figures (`figures`), the
//! anomaly rules against the previous seven days (`anomaly`), the copy of a PostgreSQL
//! journal's rows into the same queries (`postgres`), and the three renderings
//! (`csv`, `markdown`, `html` with inline SVG charts from `charts`).
//!
//! It must not write to the journal (it opens it read-only, beside a live gateway), must not
//! load the day's payments into memory (SQL aggregates them), and must never put card data in
//! a report: the card columns and the payment records are never read, and text from the
//! journal is passed through `display::redact`.
//!
//! Definitions: a payment belongs to the day of its `created_at_ms` (UTC), with all its
//! attempts. A channel's success rate is succeeded attempts over all its attempts; a
//! merchant's is succeeded payments over payments. Failovers into a channel are its attempts
//! flagged `failover`; failovers out of it are its attempts followed by a `failover` attempt
//! of the same payment. Latency percentiles are nearest-rank over the attempts' `latency_ms`.

mod anomaly;
mod charts;
mod csv;
pub mod day;
pub mod display;
pub mod figures;
mod html;
mod journal;
mod markdown;
mod postgres;

use std::path::{Path, PathBuf};

pub use day::Day;
pub use figures::Report;

/// The arguments of `paygate report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The day to report, in UTC, as YYYY-MM-DD.
    #[arg(long, value_parser = parse_day)]
    pub date: Day,
    /// html, md or csv (default: from the --out file's extension, else md).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The journal (SQLite) to read.
    #[arg(long, default_value = "paygate.db")]
    pub journal: PathBuf,
    /// Read the journal from PostgreSQL instead (as `[journal] url`), e.g.
    /// postgres://paygate@db:5432/paygate; a password belongs in the environment variable.
    #[arg(long, env = "PAYGATE_JOURNAL_URL", hide_env_values = true)]
    pub journal_url: Option<String>,
    /// The schema of the journal in PostgreSQL (as `[journal] schema`).
    #[arg(long, default_value = "paygate")]
    pub journal_schema: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Md,
    Csv,
}

impl Format {
    /// The format a file name asks for, if its extension names one.
    fn from_extension(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "html" | "htm" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Md),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("journal {}: no such file", path.display())]
    MissingJournal { path: PathBuf },
    #[error("journal {}: not a paygate journal (no payments, attempts and events tables)", path.display())]
    NotAJournal { path: PathBuf },
    #[error("journal {}: cannot read it (corrupt, or not a journal?): {reason}", path.display())]
    Journal { path: PathBuf, reason: String },
    #[error("cannot draw the chart {title:?}: {reason}")]
    Chart { title: &'static str, reason: String },
    #[error("cannot write the report to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReportError {
    fn journal(path: &Path, error: &rusqlite::Error) -> ReportError {
        ReportError::Journal {
            path: path.to_path_buf(),
            reason: error.to_string(),
        }
    }
}

/// Runs `paygate report`: reads the day, renders it, writes it to `--out` or stdout.
pub fn run(args: &ReportArgs) -> Result<(), ReportError> {
    let format = args
        .format
        .or_else(|| args.out.as_deref().and_then(Format::from_extension))
        .unwrap_or(Format::Md);
    let report = match &args.journal_url {
        Some(url) => postgres::read(url, &args.journal_schema, args.date)?,
        None => build(&args.journal, args.date)?,
    };
    let text = render(&report, format)?;
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        }),
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| ReportError::Write {
                    path: PathBuf::from("stdout"),
                    source,
                })
        }
    }
}

/// The figures of `day` from the journal at `journal`.
pub fn build(journal: &Path, day: Day) -> Result<Report, ReportError> {
    journal::read(journal, day)
}

/// The report as text in `format`.
pub fn render(report: &Report, format: Format) -> Result<String, ReportError> {
    match format {
        Format::Csv => Ok(csv::render(report)),
        Format::Md => Ok(markdown::render(report)),
        Format::Html => html::render(report),
    }
}

fn parse_day(text: &str) -> Result<Day, day::DayError> {
    Day::parse(text)
}
