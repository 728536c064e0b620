//! Live reload: placeholder, filled in by the reload step.

/// Changes the log level filter (`[log] level`); `main` builds it over the subscriber's reload
/// handle.
pub type LogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
