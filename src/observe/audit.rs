//! The audit log: one JSON line per security-relevant event (DESIGN.md §4b: `ts`, `event`,
//! `request_id`, `client_ip`, `route`, `consumer`, `reason`, `secret`), through the same
//! off-shard writer as the access log, to its own file. Events so far: `reload` (its outcome,
//! trigger and problems), `admin` (every POST and every refused token, with the peer) and
//! `auth_denied` (reason, route, client IP, request id; never the credential). A secret appears only by its name (`env:NAME`), never its value.

use super::access_log::{
    LogPipe, push_ip, push_json_string, push_json_text, push_json_text_or_null, push_rfc3339,
};
use std::net::IpAddr;

/// One audit event.
#[derive(Debug, Default)]
pub struct Event<'a> {
    pub event: &'a str,
    pub request_id: Option<&'a [u8]>,
    pub client_ip: Option<IpAddr>,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub reason: &'a str,
    /// A secret's name (`env:OPENAI_API_KEY`), never its value.
    pub secret: Option<&'a str>,
}

impl Event<'_> {
    pub fn push_json(&self, unix_ms: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, unix_ms);
        out.extend_from_slice(b"\",\"event\":");
        push_json_text(out, self.event);
        out.extend_from_slice(b",\"request_id\":");
        push_opt(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                push_ip(out, ip);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"route\":");
        push_json_text_or_null(out, self.route);
        out.extend_from_slice(b",\"consumer\":");
        push_json_text_or_null(out, self.consumer);
        out.extend_from_slice(b",\"reason\":");
        push_json_text(out, self.reason);
        out.extend_from_slice(b",\"secret\":");
        push_json_text_or_null(out, self.secret);
        out.extend_from_slice(b"}\n");
    }

    /// Writes the event from a thread that is not a shard (control, admin): the pipe's last
    /// queue is theirs. Dropped (and counted) when the writer is behind.
    pub fn record_off_shard(&self, pipe: &LogPipe) {
        let unix_ms = super::unix_ms();
        let mut line = Vec::with_capacity(256);
        self.push_json(unix_ms, &mut line);
        pipe.send_off_shard(line, 1);
    }
}

fn push_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => push_json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_line_with_the_design_fields() {
        let mut out = Vec::new();
        Event {
            event: "admin",
            client_ip: Some("127.0.0.1".parse().unwrap()),
            reason: "POST /reload: token refused",
            secret: Some("env:RINGGATE_ADMIN_TOKEN"),
            ..Event::default()
        }
        .push_json(0, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["event"], "admin");
        assert_eq!(v["secret"], "env:RINGGATE_ADMIN_TOKEN");
        for field in [
            "ts",
            "event",
            "request_id",
            "client_ip",
            "route",
            "consumer",
            "reason",
            "secret",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
