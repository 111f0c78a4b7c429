//! Errors of the lab. Each names the command (or operation) and the namespace, because a
//! failed lab build is only actionable when you can rerun the exact step by hand.

use std::fmt;
use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran and exited unsuccessfully.
    #[error("{what} in netns {ns}: {status}: {stderr}")]
    Command {
        what: String,
        ns: String,
        status: String,
        stderr: String,
    },

    /// A command could not be started, or its output could not be collected.
    #[error("start {what} in netns {ns}: {source}")]
    Spawn {
        what: String,
        ns: String,
        #[source]
        source: io::Error,
    },

    /// An in-process operation inside a namespace (sysctl write, socket) failed.
    #[error("{what} in netns {ns}: {source}")]
    Io {
        what: String,
        ns: String,
        #[source]
        source: io::Error,
    },

    /// A command succeeded but printed something we could not understand.
    #[error("parse output of {what} in netns {ns}: {detail}")]
    Parse {
        what: String,
        ns: String,
        detail: String,
    },

    /// A [`super::LabOptions`] value the lab cannot build.
    #[error("invalid lab option {option}: {detail}")]
    InvalidOption {
        option: &'static str,
        detail: String,
    },

    /// The topology was built but traffic does not flow as the plan says it should.
    #[error("connectivity check from netns {ns}: {detail}")]
    Connectivity { ns: String, detail: String },

    /// A pid that the lab did not spawn (or already reaped) was passed to it.
    #[error("pid {pid} is not a running process spawned by this lab")]
    UnknownChild { pid: u32 },

    /// A spawned process did not exit within the time asked for.
    #[error("{what} (pid {pid}) in netns {ns} still running after {timeout:?}")]
    Timeout {
        what: String,
        ns: String,
        pid: u32,
        timeout: Duration,
    },
}

/// Every failure of a teardown. Teardown continues past each error so that one stuck
/// process does not leave the remaining namespaces behind; this reports them all.
#[derive(Debug, Default)]
pub struct LabErrors(pub Vec<LabError>);

impl LabErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, e: LabError) {
        self.0.push(e);
    }

    pub(crate) fn extend(&mut self, other: LabErrors) {
        self.0.extend(other.0);
    }

    /// Ok when nothing failed, otherwise all failures.
    pub(crate) fn into_result(self) -> Result<(), LabErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for LabErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s)", self.0.len())?;
        for (i, e) in self.0.iter().enumerate() {
            write!(f, "{} {e}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

impl std::error::Error for LabErrors {}
