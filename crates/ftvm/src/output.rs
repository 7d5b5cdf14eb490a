//! Where the serial console goes.

use std::path::PathBuf;
use std::sync::Arc;

use ftvm_devices::console_writer::CONSOLE_QUEUE_BYTES;
use ftvm_devices::output::DirectOutput;

use crate::error::CliError;

/// The console queue size: `FTVM_CONSOLE_QUEUE=BYTES` (at least 4096), else
/// [`CONSOLE_QUEUE_BYTES`] (docs/operations.md, "The console when nobody reads it").
fn console_queue() -> Result<usize, CliError> {
    match std::env::var("FTVM_CONSOLE_QUEUE") {
        Err(_) => Ok(CONSOLE_QUEUE_BYTES),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= 4096 => Ok(n),
            _ => Err(CliError::Usage(format!(
                "FTVM_CONSOLE_QUEUE={v}: a number of bytes, at least 4096"
            ))),
        },
    }
}

/// Parse `--serial` and open its destination.
pub fn serial_output(spec: &str) -> Result<Arc<DirectOutput>, CliError> {
    let queue = console_queue()?;
    if spec == "stdout" {
        return Ok(Arc::new(DirectOutput::with_queue(
            Box::new(std::io::stdout()),
            queue,
        )));
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
        return Ok(Arc::new(DirectOutput::with_queue(Box::new(file), queue)));
    }
    Err(CliError::Usage(format!(
        "--serial {spec}: use `stdout` or `file:PATH`"
    )))
}
