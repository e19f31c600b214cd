//! `qkdctl`: reads the qkd plugin's status socket (like swanctl reads charon.vici) and
//! prints it as a table, JSON or Prometheus metrics. The protocol and all formatting live
//! in the `qkd-status` crate, next to the snapshot it formats, so qkdctl builds without
//! the plugin.

use qkd_status::{
    parse_status_socket, render_metrics, render_table, request_status, DEFAULT_STATUS_SOCKET,
};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: qkdctl [--socket unix:///path] <command>

commands:
  status           per peer: SAE IDs, KME and its latency, buffer levels; counters
  status --json    the same as one JSON document (for scripts)
  metrics          the same in Prometheus text exposition format
  help             this text

options:
  -s, --socket URI the plugin's socket (charon.plugins.qkd.socket),
                   default unix:///var/run/charon.qkd
  -v, --version    print qkdctl's version
";

enum Output {
    Table,
    Json,
    Metrics,
}

fn parse_args(args: &[String]) -> Result<Option<(PathBuf, Output)>, String> {
    let mut socket = DEFAULT_STATUS_SOCKET.to_owned();
    // true: metrics, false: status
    let mut metrics: Option<bool> = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-s" | "--socket" => {
                socket = it.next().ok_or("--socket needs a value")?.clone();
            }
            "-j" | "--json" => json = true,
            "-h" | "--help" | "help" => return Ok(None),
            "-v" | "--version" => {
                println!("qkdctl {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            c @ ("status" | "metrics") if metrics.is_none() => metrics = Some(c == "metrics"),
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    let path = parse_status_socket(&socket)?.ok_or("--socket none: nothing to ask")?;
    let output = match (metrics, json) {
        (Some(false), false) => Output::Table,
        (Some(false), true) => Output::Json,
        (Some(true), false) => Output::Metrics,
        (Some(true), true) => return Err("--json goes with status".into()),
        (None, _) => return Err("no command given".into()),
    };
    Ok(Some((path, output)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, output) = match parse_args(&args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            if !args.iter().any(|a| a == "-v" || a == "--version") {
                print!("{USAGE}");
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("qkdctl: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match request_status(&path) {
        Ok(snapshot) => {
            match output {
                Output::Table => print!("{}", render_table(&snapshot)),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&snapshot).expect("a snapshot serializes")
                ),
                Output::Metrics => print!("{}", render_metrics(&snapshot)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qkdctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<(PathBuf, Output)>, String> {
        parse_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commands_options_and_errors() {
        let (path, output) = parse(&["status"]).unwrap().unwrap();
        assert_eq!(path, PathBuf::from("/var/run/charon.qkd"));
        assert!(matches!(output, Output::Table));
        let (path, output) = parse(&["-s", "unix:///tmp/q", "status", "--json"])
            .unwrap()
            .unwrap();
        assert_eq!(path, PathBuf::from("/tmp/q"));
        assert!(matches!(output, Output::Json));
        assert!(matches!(
            parse(&["metrics"]).unwrap().unwrap().1,
            Output::Metrics
        ));
        assert!(parse(&["help"]).unwrap().is_none());
        for bad in [
            &["metrics", "--json"][..],
            &[],
            &["status", "status"],
            &["--socket"],
            &["--socket", "/no/scheme", "status"],
            &["frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
