//! Where the serial console goes.

use std::path::PathBuf;
use std::sync::Arc;

use ftvm_devices::output::DirectOutput;

use crate::error::CliError;

/// Parse `--serial` and open its destination.
pub fn serial_output(spec: &str) -> Result<Arc<DirectOutput>, CliError> {
    if spec == "stdout" {
        return Ok(Arc::new(DirectOutput::new(Box::new(std::io::stdout()))));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        let path = PathBuf::from(path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| CliError::Open {
                what: "serial output file",
                path: path.clone(),
                source,
            })?;
        return Ok(Arc::new(DirectOutput::new(Box::new(file))));
    }
    Err(CliError::Usage(format!(
        "--serial {spec}: use `stdout` or `file:PATH`"
    )))
}
