//! `[log]`: the log filter and the line format, their defaults and the filter's check.
//!
//! Rule of dependency: a leaf inside `config` (it asks `tracing_subscriber` whether the filter
//! parses).

use serde::{Deserialize, Serialize};

/// What is logged, and how lines look.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `"info"`, `"debug"`, `"info,berth::upstream=debug"`. `RUST_LOG`, when
    /// set, wins over it. Changes on reload.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `"text"` (the default) or `"json"`: one JSON object per line, for Loki, Elasticsearch and
    /// journald pipelines. Needs a restart to change.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// The level must be a filter `tracing` accepts. On error, the key and the reason.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err((
                "log.level".into(),
                format!(
                    "{:?} is not a log filter like \"info\" or \"info,berth::upstream=debug\": {e}",
                    self.level
                ),
            ));
        }
        Ok(())
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn level_and_format_are_checked() {
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let cases = [
            (format!("[log]\nlevel = \"info,=x=y\"\n{base}"), "log.level"),
            (
                format!("[log]\nformat = \"xml\"\n{base}"),
                "expected `text` or `json`",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
