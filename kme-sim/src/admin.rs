//! The admin interface: fault injection, counters and the key journal.
//!
//! Commands travel as JSON, e.g. `{"command": "latency", "ms": 200}`, in `POST /command` to
//! the plain-HTTP admin listener (loopback only; see `ServeConfig`), which answers with a
//! JSON object. `qkd-kme-sim admin` is a client for it, and `TestLink::admin` runs the same
//! commands in-process.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::deviations::{parse_switch, Profile};
use crate::keystore::KeyStoreError;
use crate::link::Link;

/// Largest admin request body accepted.
const MAX_COMMAND_BYTES: usize = 4096;

/// An admin command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminCommand {
    /// Stop key generation (the pool keeps serving what it holds)
    Pause,
    /// Restart key generation
    Resume,
    /// Answer every ETSI request with 503 (on) or serve normally (off)
    #[serde(rename = "fail-503")]
    #[command(name = "fail-503")]
    Fail503 {
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set, value_name = "on|off")]
        on: bool,
    },
    /// Delay every ETSI answer by MS milliseconds (0 = none)
    Latency {
        #[arg(value_name = "MS")]
        ms: u64,
    },
    /// Hand the slave different keys than the master got, on the next dec_keys only
    MismatchNext,
    /// Close ETSI connections without answering (on) or answer normally (off)
    Drop {
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set, value_name = "on|off")]
        on: bool,
    },
    /// Read ETSI requests and never answer them (on) or answer normally (off)
    Hang {
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set, value_name = "on|off")]
        on: bool,
    },
    /// Send ETSI answer bodies one byte every 0.5 s (on) or at once (off)
    Drip {
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set, value_name = "on|off")]
        on: bool,
    },
    /// Replace the deviations from the spec by those of a profile (spec: none)
    Profile {
        #[arg(value_enum, value_name = "PROFILE")]
        profile: Profile,
    },
    /// Show counters, pool state, active faults and deviations (JSON)
    Stats,
    /// Show the delivered keys (JSON list; needs `serve --journal`)
    Journal,
    /// Add N keys to the pool at once (up to max_key_count)
    Refill {
        #[arg(value_name = "N")]
        count: usize,
    },
    /// Close one KME listener's socket and connections, as a KME node that went down (off),
    /// or listen on it again (on)
    Listener {
        #[arg(value_name = "ADDR:PORT")]
        addr: SocketAddr,
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set, value_name = "on|off")]
        on: bool,
    },
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the journal is off (start the simulator with --journal)")]
    JournalOff,
    #[error("no KME listens on {addr}; the KME listeners are {known:?}")]
    UnknownListener {
        addr: SocketAddr,
        known: Vec<SocketAddr>,
    },
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error("invalid admin URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("admin HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin listener answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("admin listener sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs `command` against `link` and returns its JSON answer.
pub fn execute(link: &Link, command: &AdminCommand) -> Result<Value, AdminError> {
    let faults = &link.faults;
    let answer = match command {
        AdminCommand::Pause => {
            link.store.set_paused(true)?;
            json!({"paused": true})
        }
        AdminCommand::Resume => {
            link.store.set_paused(false)?;
            json!({"paused": false})
        }
        AdminCommand::Fail503 { on } => {
            faults.set_fail_503(*on);
            json!({"fail_503": on})
        }
        AdminCommand::Latency { ms } => {
            faults.set_latency(Duration::from_millis(*ms));
            json!({"latency_ms": ms})
        }
        AdminCommand::MismatchNext => {
            faults.arm_mismatch();
            json!({"mismatch_next": true})
        }
        AdminCommand::Drop { on } => {
            faults.set_drop_connections(*on);
            json!({"drop": on})
        }
        AdminCommand::Hang { on } => {
            faults.set_hang(*on);
            json!({"hang": on})
        }
        AdminCommand::Drip { on } => {
            faults.set_drip(*on);
            json!({"drip": on})
        }
        AdminCommand::Profile { profile } => {
            link.set_deviations(profile.deviations());
            json!({"profile": profile, "deviations": link.deviations()})
        }
        AdminCommand::Stats => serde_json::to_value(link.stats()?)?,
        AdminCommand::Journal => {
            serde_json::to_value(link.store.journal()?.ok_or(AdminError::JournalOff)?)?
        }
        AdminCommand::Refill { count } => {
            let added = link.store.refill(*count)?;
            json!({"added": added, "stored_key_count": link.store.stored_key_count()?})
        }
        AdminCommand::Listener { addr, on } => {
            if !link.listeners.set_up(*addr, *on) {
                return Err(AdminError::UnknownListener {
                    addr: *addr,
                    known: link.listeners.addrs(),
                });
            }
            json!({"listener": addr, "up": on})
        }
    };
    if matches!(command, AdminCommand::Stats | AdminCommand::Journal) {
        tracing::debug!(?command, "admin query");
    } else {
        tracing::info!(?command, "admin command");
    }
    Ok(answer)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves one admin HTTP request.
pub async fn handle(link: &Link, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/command" {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"message": "use POST /command"}),
        );
    }
    if request.method() != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"message": "use POST /command"}),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_COMMAND_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": err.to_string()}),
            )
        }
    };
    let command: AdminCommand = match serde_json::from_slice(&body) {
        Ok(command) => command,
        Err(err) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": format!("invalid command: {err}")}),
            )
        }
    };
    match execute(link, &command) {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(AdminError::JournalOff) => json_response(
            StatusCode::CONFLICT,
            &json!({"message": AdminError::JournalOff.to_string()}),
        ),
        Err(err @ AdminError::UnknownListener { .. }) => {
            json_response(StatusCode::NOT_FOUND, &json!({"message": err.to_string()}))
        }
        Err(err) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"message": err.to_string()}),
        ),
    }
}

/// Sends `command` to the admin listener at `url` (`http://127.0.0.1:PORT`).
pub async fn send(url: &str, command: &AdminCommand) -> Result<Value, AdminError> {
    let bad_url = |reason: &str| AdminError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad_url("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad_url("the admin listener speaks plain http://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad_url("no host:port"))?
        .clone();
    let addr = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| AdminError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let path = format!("{}/command", uri.path().trim_end_matches('/'));
    let request = Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(command)?)))
        .map_err(|_| bad_url("cannot form a request path"))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    connection.abort();
    if status != StatusCode::OK {
        return Err(AdminError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Where the admin listener is, as a URL for `send` and `TestLink::admin_url`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_stable_json_names() {
        let cases = [
            (AdminCommand::Pause, json!({"command": "pause"})),
            (
                AdminCommand::Fail503 { on: true },
                json!({"command": "fail-503", "on": true}),
            ),
            (
                AdminCommand::Latency { ms: 5 },
                json!({"command": "latency", "ms": 5}),
            ),
            (
                AdminCommand::MismatchNext,
                json!({"command": "mismatch-next"}),
            ),
            (
                AdminCommand::Drop { on: false },
                json!({"command": "drop", "on": false}),
            ),
            (
                AdminCommand::Refill { count: 3 },
                json!({"command": "refill", "count": 3}),
            ),
            (
                AdminCommand::Hang { on: true },
                json!({"command": "hang", "on": true}),
            ),
            (
                AdminCommand::Drip { on: false },
                json!({"command": "drip", "on": false}),
            ),
            (
                AdminCommand::Profile {
                    profile: Profile::RealKme,
                },
                json!({"command": "profile", "profile": "real-kme"}),
            ),
            (
                AdminCommand::Listener {
                    addr: "192.0.2.30:8443".parse().unwrap(),
                    on: false,
                },
                json!({"command": "listener", "addr": "192.0.2.30:8443", "on": false}),
            ),
        ];
        for (command, expected) in cases {
            assert_eq!(serde_json::to_value(&command).unwrap(), expected);
            assert_eq!(
                serde_json::from_value::<AdminCommand>(expected).unwrap(),
                command
            );
        }
    }
}
