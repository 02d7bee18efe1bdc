//! What a run reports: machine facts, the summary tables on stdout, the JSON document
//! (`--json FILE`) and the SVG plots (`--plot DIR`).
//!
//! - [`Meta`]: tool version, command line, date, git commit and the machine (CPU model, cores,
//!   memory, kernel), attached to every JSON document.
//! - [`table`]: fixed-width summary tables, one printer per scenario.
//! - [`plot`]: latency against offered load (c2c sweeps) and RSS against connection count
//!   (idle).

pub mod plot;
pub mod table;

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

/// The machine a run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// `MemTotal` of `/proc/meminfo`, bytes.
    pub mem_total_bytes: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

impl Machine {
    /// Reads the facts from `/proc`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Facts about a run, attached to every JSON document.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// `magpie-bench`.
    pub tool: &'static str,
    /// The bench's version.
    pub version: &'static str,
    /// The command line as given.
    pub command_line: Vec<String>,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// `git rev-parse HEAD` of the working directory, when it is a git checkout.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// The machine.
    pub machine: Machine,
    /// The open-file limit the bench ran with.
    pub fd_limit: u64,
}

impl Meta {
    /// Collects the facts now.
    pub fn collect(fd_limit: u64) -> Self {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        Self {
            tool: "magpie-bench",
            version: env!("CARGO_PKG_VERSION"),
            command_line: std::env::args().collect(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            git_commit: git(&["rev-parse", "HEAD"]),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty()),
            machine: Machine::detect(),
            fd_limit,
        }
    }
}

/// The JSON document of one invocation.
#[derive(Debug, Serialize)]
pub struct Document<'a, T: Serialize> {
    /// Run facts.
    pub meta: &'a Meta,
    /// `idle`, `c2c`, `login` or `catchup`.
    pub scenario: &'a str,
    /// Whether every correctness check passed.
    pub passed: bool,
    /// The scenario's report.
    pub result: &'a T,
}

/// Writes a document as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, doc: &Document<'_, T>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_come_from_proc() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(m.mem_total_bytes > 0);
    }
}
