//! The socket's request and answer encoding (see the crate documentation).

use crate::{Snapshot, PROTOCOL};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    command: String,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// An error document, `{"error":"..."}`.
pub fn error_reply(error: impl Into<String>) -> String {
    serde_json::to_string(&ErrorReply {
        error: error.into(),
    })
    .expect("a string serializes")
}

/// The server's answer to one request line: a snapshot, or an error document.
/// `snapshot` is only called for a valid request; None means the plugin has no runtime.
pub fn answer(request: &[u8], snapshot: impl FnOnce() -> Option<Snapshot>) -> String {
    let request: Request = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => {
            return error_reply(format!(
                "bad request ({e}): send {{\"command\":\"status\"}}"
            ))
        }
    };
    match request.command.as_str() {
        "status" => match snapshot() {
            Some(s) => serde_json::to_string(&s).expect("a snapshot serializes"),
            None => error_reply("the qkd plugin has no configuration loaded"),
        },
        other => error_reply(format!(
            "unknown command '{}': the only command is \"status\"",
            other.escape_debug()
        )),
    }
}

/// The request line `qkdctl` sends.
pub fn status_request() -> String {
    "{\"command\":\"status\"}\n".to_owned()
}

/// A client's reading of the server's answer.
pub fn parse_answer(text: &str) -> Result<Snapshot, String> {
    if let Ok(ErrorReply { error }) = serde_json::from_str::<ErrorReply>(text) {
        return Err(error);
    }
    let snapshot: Snapshot = serde_json::from_str(text)
        .map_err(|e| format!("unreadable answer from the plugin: {e}"))?;
    if snapshot.protocol != PROTOCOL {
        return Err(format!(
            "the plugin speaks status protocol {}, this qkdctl {PROTOCOL}: install matching versions",
            snapshot.protocol
        ));
    }
    Ok(snapshot)
}
