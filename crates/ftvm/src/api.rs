//! The API socket: a Unix stream socket speaking one JSON object per line.
//!
//! Request: `{"cmd": "pause"}`; response: `{"ok": true, ...}` or
//! `{"ok": false, "error": "what went wrong"}`. Commands are listed in docs/api.md.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// Errors of the API socket, server and client side.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket path is taken.
    #[error("API socket path {0} already exists: remove it if no ftvm is using it, or choose another --api-socket")]
    PathExists(PathBuf),
    /// Binding failed.
    #[error("cannot create API socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error(
        "cannot connect to API socket {path}: {source} (is ftvm running with --api-socket {path}?)"
    )]
    Connect {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The conversation failed.
    #[error("API socket {path}: {reason}")]
    Exchange {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The VMM answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Handles one request; long operations may report progress through the callback (each
/// report reaches the client as a `{"progress": ...}` line before the answer).
pub type Handler = Arc<dyn Fn(&Value, &mut dyn FnMut(Value)) -> Value + Send + Sync>;

/// Runs after an answer carrying `"handoff": "<where>"` has been written: the VM now
/// runs elsewhere and this process may end.
pub type AfterHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A running API server; removes its socket file when dropped.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Listen on `path` and serve each connection on its own thread.
    pub fn start(
        path: &Path,
        handler: Handler,
        after_hook: Option<AfterHook>,
    ) -> Result<Self, ApiError> {
        if path.exists() {
            return Err(ApiError::PathExists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let h = handler.clone();
                    let a = after_hook.clone();
                    let _ = std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || serve(stream, &h, a));
                }
            })
            .map_err(|source| ApiError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _already_gone = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, handler: &Handler, after_hook: Option<AfterHook>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let mut progress_writer = match writer.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut progress = |p: Value| {
            let mut l = json!({ "progress": p }).to_string();
            l.push('\n');
            let _client_may_have_gone = progress_writer.write_all(l.as_bytes());
        };
        let response = match serde_json::from_str::<Value>(&line) {
            Ok(req) if req.get("cmd").and_then(Value::as_str).is_some() => {
                handler(&req, &mut progress)
            }
            Ok(_) => error("request has no \"cmd\" string"),
            Err(e) => error(&format!("request is not JSON: {e}")),
        };
        let mut out = response.to_string();
        out.push('\n');
        let delivered = writer
            .write_all(out.as_bytes())
            .and_then(|()| writer.flush());
        // Actions that end this process (a migrated VM's handoff) run only after the
        // answer is out, so the client never mistakes success for a lost connection.
        if let Some(after) = response.get("handoff").and_then(Value::as_str) {
            if let Some(h) = &after_hook {
                h(after);
            }
        }
        if delivered.is_err() {
            return;
        }
    }
}

/// An error response.
pub fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

/// Send one request and return the response's fields (an `ok: false` answer becomes
/// [`ApiError::Refused`]). Progress lines before the answer go to `on_progress`.
pub fn request(
    path: &Path,
    req: &Value,
    timeout: Duration,
    mut on_progress: impl FnMut(&Value),
) -> Result<Value, ApiError> {
    let stream = UnixStream::connect(path).map_err(|source| ApiError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let exchange = |reason: String| ApiError::Exchange {
        path: path.to_path_buf(),
        reason,
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| exchange(e.to_string()))?;
    let mut w = stream.try_clone().map_err(|e| exchange(e.to_string()))?;
    let mut line = req.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
        .map_err(|e| exchange(format!("sending the request: {e}")))?;
    let mut reader = BufReader::new(stream);
    let v: Value = loop {
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|e| exchange(format!("reading the answer: {e}")))?;
        if answer.is_empty() {
            return Err(exchange(
                "the VMM closed the connection without answering".into(),
            ));
        }
        let v: Value = serde_json::from_str(&answer)
            .map_err(|e| exchange(format!("answer is not JSON: {e}")))?;
        match v.get("progress") {
            Some(p) if v.get("ok").is_none() => on_progress(p),
            _ => break v,
        }
    };
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v)
    } else {
        Err(ApiError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("the VMM refused without a reason")
                .to_string(),
        ))
    }
}
