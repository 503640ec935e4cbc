//! Listeners: addresses, limits merged with `[limits]`, TLS, redirects.

use super::*;
use crate::config::file::*;
use crate::config::snapshot::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub(super) fn compile_listeners(
    c: &mut Checker,
    config: &Config,
    base: &Path,
) -> Vec<ListenerSpec> {
    if config.listeners.is_empty() {
        c.problem("listeners", "at least one [[listeners]] entry is required");
    }
    c.unique_names(
        "listeners",
        config.listeners.iter().map(|l| l.name.as_str()),
    );
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}].bind");
        let limits = config.limits.with_override(&l.limits);
        check_limits(c, &format!("listeners[{i}].limits"), &limits);
        let addr: SocketAddr = match l.bind.parse() {
            Ok(a) => a,
            Err(_) => {
                c.problem(
                    &key,
                    format!(
                        "bad address {:?}: expected IP:PORT such as \"0.0.0.0:8080\" or \"[::1]:8080\"",
                        l.bind
                    ),
                );
                continue;
            }
        };
        if let Some(first) = seen.insert(addr, i) {
            c.problem(
                &key,
                format!("address {addr} is also bound by listeners[{first}]"),
            );
        }
        let tls = l.tls.as_ref().and_then(|t| {
            crate::tls::server_tls(&tls_settings(t), base)
                .map_err(|problems| c.tls_problems(&format!("listeners[{i}].tls"), problems))
                .ok()
        });
        if l.tls.is_some() && l.redirect_https.is_some() {
            c.problem(
                format!("listeners[{i}].redirect_https"),
                "a TLS listener cannot redirect to HTTPS (it already is)",
            );
        }
        out.push(ListenerSpec {
            name: l.name.clone(),
            addr,
            limits: effective(&limits),
            bind_line: c.lines.line(&key),
            tls: tls.map(Arc::new),
            redirect_https: l.redirect_https.as_ref().map(|r| r.port),
            replace_x_forwarded_for: l.x_forwarded_for == super::XForwardedFor::Replace,
            ip_rules: super::ip_rules(c, &format!("listeners[{i}]"), &l.ip_allow, &l.ip_deny),
            proxy_protocol: l.proxy_protocol,
        });
    }
    out
}

/// `[listeners.tls]` as the TLS layer takes it.
fn tls_settings(t: &ListenerTlsConfig) -> crate::tls::ServerTlsSettings<'_> {
    crate::tls::ServerTlsSettings {
        certificates: t
            .certificates
            .iter()
            .map(|c| (c.cert.as_path(), c.key.as_path()))
            .collect(),
        allow_tls12: t.min_version == TlsVersion::V1_2,
        client_ca: t.client_ca.as_deref(),
        client_cert_required: t.client_auth == ClientAuth::Required,
        alpn: &t.alpn,
        handshake_timeout: t.handshake_timeout.0,
    }
}
