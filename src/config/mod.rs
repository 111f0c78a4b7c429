//! The configuration file (one TOML file; config/inferlane.toml is the complete
//! example).
//!
//! Loading has three steps, and each reports errors as `FILE:LINE:COL: message`:
//! 1. TOML syntax (toml's parser, which stops at the first syntax error);
//! 2. shape: serde structs that deny unknown keys, with value types (rates, DSCPs,
//!    CIDRs, ...) that parse themselves, so the error spans the offending value;
//! 3. meaning (`validate`): names that must exist, lists that must not be empty,
//!    values that must agree. All problems are reported, each located by key path.
//!
//! `inferlane check` and `inferlane run` both go through [`load`], so what `check`
//! accepts is exactly what `run` accepts.

use std::fmt;
use std::path::Path;

use thiserror::Error;
use toml::de::DeTable;

mod locate;
mod perm;
mod schema;
mod units;
mod validate;
mod values;

pub use schema::{
    Action, Class, CollectorConfig, Config, Daemon, Demote, Export, ExportFormat, Health, Lan, Metrics, Mode,
    ProviderConfig, Queue, Rule, Uplink,
};
pub use units::{format_duration, parse_duration, ByteSize, Quantity, Rate, UnitError, UnitProblem};
pub use values::{parse_cidr, parse_socket_addr, Dscp, L4Proto, PortSpec, Probe, ValueError};

/// One problem with a configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all, so there is no position to give.
    // `error` is deliberately not a `#[source]`: the message already includes it, and
    // error reporters that walk the chain would print it twice.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    /// The file could be changed by someone other than root or the user running
    /// inferlane (group/other-writable, or a foreign owner), so it is not read.
    #[error("{file}: {message}")]
    Untrusted { file: String, message: String },
    /// Bad syntax, shape or meaning at a place in the file. `line` and `col` are
    /// 1-based; `col` counts characters.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
}

impl ConfigError {
    pub fn file(&self) -> &str {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Untrusted { file, .. } | ConfigError::Invalid { file, .. } => {
                file
            }
        }
    }

    /// `(line, col)`, or `None` when the file could not be (or was not) read.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Read { .. } | ConfigError::Untrusted { .. } => None,
            ConfigError::Invalid { line, col, .. } => Some((*line, *col)),
        }
    }

    /// The message without the `FILE:LINE:COL: ` prefix.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { error, .. } => format!("cannot read: {error}"),
            ConfigError::Untrusted { message, .. } | ConfigError::Invalid { message, .. } => message.clone(),
        }
    }
}

/// Every problem found, in file order. Never empty when returned as an error.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One error per line, no trailing newline.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates the file at `path`. A file that others could
/// change is refused before it is parsed (see `perm`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_source(path).map(|(config, _)| config)
}

/// Reads the file at `path` if only root or the running user can change it.
fn read_trusted(path: &Path) -> Result<String, ConfigErrors> {
    let file = path.display().to_string();
    perm::read_trusted(path).map_err(|e| {
        ConfigErrors(vec![match e {
            perm::ReadError::Io(error) => ConfigError::Read { file, error },
            perm::ReadError::Untrusted(perm::Untrusted(message)) => ConfigError::Untrusted { file, message },
        }])
    })
}

/// The text a config was parsed from, kept so that errors found after parsing
/// (by the rule compiler, against datapath limits) read FILE:LINE:COL too.
#[derive(Debug, Clone)]
pub struct Source {
    pub text: String,
    pub origin: String,
}

/// One step of a key path into the document, e.g. `rules`, `2`, `destinations`.
#[derive(Debug, Clone, Copy)]
pub enum PathSeg {
    Key(&'static str),
    Index(usize),
}

impl Source {
    /// An error at `path`, or at its nearest existing parent.
    pub fn error_at(&self, path: &[PathSeg], message: String) -> ConfigError {
        let key_path = locate::KeyPath(
            path.iter()
                .map(|s| match *s {
                    PathSeg::Key(k) => locate::Seg::Key(k),
                    PathSeg::Index(i) => locate::Seg::Index(i),
                })
                .collect(),
        );
        let offset = match DeTable::parse(&self.text) {
            Ok(doc) => locate::resolve(&doc, &key_path).start,
            Err(_) => 0,
        };
        let (line, col) = locate::line_col(&self.text, offset);
        ConfigError::Invalid { file: self.origin.clone(), line, col, message }
    }
}

/// Like [`load`], also returning the text for locating later errors.
pub fn load_with_source(path: &Path) -> Result<(Config, Source), ConfigErrors> {
    let file = path.display().to_string();
    let text = read_trusted(path)?;
    let config = parse(&text, &file)?;
    Ok((config, Source { text, origin: file }))
}

/// Parses and validates `text`; `origin` names the file in messages.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let at = |offset: usize, message: String| {
        let (line, col) = locate::line_col(text, offset);
        ConfigError::Invalid {
            file: origin.to_owned(),
            line,
            col,
            message,
        }
    };

    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut message = requote(e.message());
        // toml says only "duplicate key"; name it.
        if message == "duplicate key" {
            if let Some(key) = text.get(span.clone()) {
                message = format!("duplicate key {key:?}");
            }
        }
        ConfigErrors(vec![at(span.start, message)])
    })?;

    // The document is kept to locate semantic errors by key path afterwards.
    let config = schema::from_document(doc.clone()).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| at(e.span.start, requote(&e.message)))
                .collect(),
        )
    })?;

    let issues = validate::check(&config);
    if issues.is_empty() {
        return Ok(config);
    }
    let mut located: Vec<(usize, ConfigError)> = issues
        .into_iter()
        .map(|issue| {
            let offset = locate::resolve(&doc, &issue.path).start;
            let mut message = issue.message;
            if let Some(first) = issue.first {
                let (line, _) = locate::line_col(text, locate::resolve(&doc, &first).start);
                message.push_str(&format!(" (first at line {line})"));
            }
            (offset, at(offset, message))
        })
        .collect();
    // Stable: problems at one place keep the order the checks found them in.
    located.sort_by_key(|(offset, _)| *offset);
    Err(ConfigErrors(located.into_iter().map(|(_, e)| e).collect()))
}

/// serde and toml quote names with backticks (unknown field `x`); our messages use
/// double quotes, like the TOML they point at. Numbers and booleans lose their quotes
/// ("invalid type: integer 5, expected ...").
fn requote(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(len) = after.find('`') else { break };
        let inner = &after[..len];
        out.push_str(&rest[..open]);
        let numeric = inner.starts_with(|c: char| c.is_ascii_digit() || c == '-')
            && inner.parse::<f64>().is_ok();
        if numeric || inner == "true" || inner == "false" {
            out.push_str(inner);
        } else if inner.contains('"') {
            out.push('\'');
            out.push_str(inner);
            out.push('\'');
        } else {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        }
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requote_turns_backticks_into_double_quotes() {
        assert_eq!(
            requote("unknown field `interfacez`, expected `interfaces`"),
            "unknown field \"interfacez\", expected \"interfaces\""
        );
        assert_eq!(
            requote("invalid type: integer `5`, expected a string"),
            "invalid type: integer 5, expected a string"
        );
        assert_eq!(
            requote("invalid type: boolean `true`"),
            "invalid type: boolean true"
        );
        assert_eq!(
            requote("invalid basic string, expected `\"`"),
            "invalid basic string, expected '\"'"
        );
        assert_eq!(requote("a lone ` stays"), "a lone ` stays");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::Invalid {
                file: "a.toml".into(),
                line: 3,
                col: 7,
                message: "bad".into(),
            },
            ConfigError::Read {
                file: "b.toml".into(),
                error: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        ]);
        assert_eq!(
            errors.to_string(),
            "a.toml:3:7: bad\nb.toml: cannot read: entity not found"
        );
        assert_eq!(errors.0[0].position(), Some((3, 7)));
        assert_eq!(errors.0[1].position(), None);
        assert_eq!(errors.0[1].file(), "b.toml");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = parse(
            "[lan]\ninterfaces = [\"lan0\"]\n[[uplinks]]\nname = \"a\"\ninterface = \"wan0\"\nhealth = { probes = [\"icmp:192.0.2.1\"] }\n[export]\ncollectors = [\"192.0.2.50:4739\"]\n",
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("expected the config to load, got:\n{e}"));
        assert_eq!(config.daemon, Daemon::default());
        assert_eq!(config.daemon.mode, Mode::Enforce);
        assert_eq!(
            config.daemon.control_socket,
            Path::new("/run/inferlane/control.sock")
        );
        let uplink = &config.uplinks[0];
        assert_eq!(
            (uplink.priority, uplink.metered, uplink.egress_rate),
            (10, false, None)
        );
        let health = uplink.health.as_ref().unwrap();
        assert_eq!(health.interval, std::time::Duration::from_millis(300));
        assert_eq!((health.down_after, health.up_after), (3, 100));
        let export = config.export.as_ref().unwrap();
        assert_eq!(export.format, ExportFormat::Ipfix);
        assert_eq!(export.active_timeout, std::time::Duration::from_secs(60));
        assert_eq!(export.inactive_timeout, std::time::Duration::from_secs(15));
        assert_eq!(config.metrics, None);
    }
}
