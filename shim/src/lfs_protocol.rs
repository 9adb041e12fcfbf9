//! The git-lfs custom transfer protocol (standalone mode): one JSON object per line. Pure: no
//! I/O, so every odd input can be tested and fuzzed.

use serde::Deserialize;
use serde_json::json;

/// What git-lfs sends the agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum AgentRequest {
    Init { operation: String, remote: String },
    Upload { oid: String, size: u64, path: String },
    Download { oid: String, size: u64 },
    Terminate,
}

#[derive(Debug, thiserror::Error)]
#[error("not a git-lfs transfer request ({0})")]
pub struct ParseError(#[from] serde_json::Error);

pub fn parse_request(line: &str) -> Result<AgentRequest, ParseError> {
    Ok(serde_json::from_str(line.trim_end())?)
}

/// The answer to `init`: `{}` when ready.
pub fn init_reply(error: Option<&str>) -> String {
    match error {
        None => "{}".to_string(),
        Some(message) => json!({ "error": { "code": 32, "message": message } }).to_string(),
    }
}

pub fn progress(oid: &str, bytes_so_far: u64, bytes_since_last: u64) -> String {
    json!({ "event": "progress", "oid": oid, "bytesSoFar": bytes_so_far, "bytesSinceLast": bytes_since_last })
        .to_string()
}

pub fn complete(oid: &str, path: Option<&str>) -> String {
    match path {
        Some(path) => json!({ "event": "complete", "oid": oid, "path": path }).to_string(),
        None => json!({ "event": "complete", "oid": oid }).to_string(),
    }
}

pub fn failed(oid: &str, code: u32, message: &str) -> String {
    json!({ "event": "complete", "oid": oid, "error": { "code": code, "message": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "22ab5f63670800cc7be06dbed816012b0dc411e774754c7579467d2536a9cf3e";

    #[test]
    fn parses_what_git_lfs_sends() {
        let init =
            r#"{"event":"init","operation":"upload","remote":"origin","concurrent":true,"concurrenttransfers":3}"#;
        assert_eq!(
            parse_request(init).unwrap(),
            AgentRequest::Init { operation: "upload".into(), remote: "origin".into() }
        );
        let upload = format!(
            r#"{{"event":"upload","oid":"{OID}","size":12,"path":"/r/.git/lfs/objects/22/ab/{OID}","action":null}}"#
        );
        assert!(matches!(parse_request(&upload).unwrap(), AgentRequest::Upload { size: 12, .. }));
        let download = format!(r#"{{"event":"download","oid":"{OID}","size":12,"action":null}}"#);
        assert_eq!(parse_request(&download).unwrap(), AgentRequest::Download { oid: OID.into(), size: 12 });
        assert_eq!(parse_request("{\"event\":\"terminate\"}\n").unwrap(), AgentRequest::Terminate);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_request("not json").is_err());
        assert!(parse_request(r#"{"event":"explode"}"#).is_err());
        assert!(parse_request(r#"{"event":"upload","oid":"x"}"#).is_err());
        assert!(parse_request(r#"{"event":"download","oid":"x","size":-1}"#).is_err());
    }

    #[test]
    fn renders_events() {
        assert_eq!(init_reply(None), "{}");
        assert_eq!(progress("o", 10, 4), r#"{"bytesSinceLast":4,"bytesSoFar":10,"event":"progress","oid":"o"}"#);
        assert_eq!(complete("o", Some("/tmp/f")), r#"{"event":"complete","oid":"o","path":"/tmp/f"}"#);
        assert!(failed("o", 2, "boom").contains(r#""error":{"code":2,"message":"boom"}"#));
    }
}
