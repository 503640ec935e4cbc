//! Routes: matching, actions, header transforms, retries, upgrades.

use super::*;
use crate::config::file::*;
use crate::config::snapshot::*;
use crate::route::{PathMatch, RouteKey};
use std::sync::Arc;

pub(super) fn compile_routes(
    c: &mut Checker,
    config: &Config,
    upstreams: &[UpstreamSpec],
    auth: &crate::auth::AuthSpec,
    rate_limits: &[Arc<crate::limit::PolicySpec>],
    base: &Path,
) -> (Vec<RouteSpec>, Vec<RouteKey>) {
    c.unique_names("routes", config.routes.iter().map(|r| r.name.as_str()));
    let mut specs = Vec::new();
    let mut keys = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let path = route_path(c, &key, r);
        if let Some(host) = &r.host
            && !is_host_pattern(host)
        {
            c.problem(
                format!("{key}.host"),
                format!(
                    "bad host {host:?}: expected a name such as \"api.example.com\" or \"*.example.com\" (no port)"
                ),
            );
        }
        let methods = r.methods.as_ref().map(|list| {
            if list.is_empty() {
                c.problem(format!("{key}.methods"), "must not be empty when given");
            }
            for (j, m) in list.iter().enumerate() {
                if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                    c.problem(
                        format!("{key}.methods[{j}]"),
                        format!("bad method {m:?}: expected an upper-case token such as \"GET\""),
                    );
                }
            }
            list.clone()
        });
        let action = route_action(c, &key, r, upstreams);
        if r.retries > 10 {
            c.problem(format!("{key}.retries"), "must be between 0 and 10");
        }
        if r.per_try_timeout.is_some_and(|d| d.0.is_zero()) {
            c.problem(
                format!("{key}.per_try_timeout"),
                "must be greater than zero",
            );
        }
        if r.strip_prefix && r.path_prefix.is_none() {
            c.problem(
                format!("{key}.strip_prefix"),
                "strip_prefix needs path_prefix",
            );
        }
        if let Some(h) = &r.host_rewrite
            && (h.is_empty() || !is_field_value(h) || h.contains(' '))
        {
            c.problem(format!("{key}.host_rewrite"), "must be a valid Host value");
        }
        for (field, d) in [
            ("tunnel_idle_timeout", r.tunnel_idle_timeout),
            ("tunnel_max_duration", Some(r.tunnel_max_duration)),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                c.problem(format!("{key}.{field}"), "must be greater than zero");
            }
        }
        let request_headers = transform(
            c,
            &format!("{key}.request_headers"),
            &r.request_headers,
            GATEWAY_REQUEST_FIELDS,
        );
        let response_headers = transform(
            c,
            &format!("{key}.response_headers"),
            &r.response_headers,
            GATEWAY_RESPONSE_FIELDS,
        );
        keys.push(RouteKey {
            host: r.host.clone(),
            path: path.clone(),
            methods,
        });
        let validate = r.validate.as_ref().map(|v| validation(c, &key, v, &action));
        let injections = super::auth::compile_injections(
            c,
            &key,
            r,
            r.upstream
                .as_ref()
                .and_then(|name| config.upstreams.iter().find(|u| &u.name == name)),
            base,
        );
        let mut response_headers = response_headers;
        if let Some(injections) = &injections {
            response_headers.redact_query =
                injections.query.iter().map(|i| i.name.clone()).collect();
        }
        specs.push(RouteSpec {
            name: r.name.clone(),
            host: r.host.clone(),
            path,
            action,
            strip_prefix: r.strip_prefix,
            host_rewrite: r.host_rewrite.clone(),
            request_headers,
            response_headers_tls: with_hsts(&response_headers, r.hsts.as_ref()),
            response_headers,
            retries: r.retries,
            retry_on: retry_on(c, &key, &r.retry_on),
            per_try_timeout: r.per_try_timeout.map(|d| d.0),
            retry_non_idempotent: r.retry_non_idempotent,
            upgrade_protocols: upgrade_protocols(c, &key, &r.upgrade_protocols),
            tunnel_idle_timeout: r.tunnel_idle_timeout.map(|d| d.0),
            tunnel_max_duration: r.tunnel_max_duration.0,
            auth: super::auth::compile_route_auth(c, &key, r, auth),
            ip_rules: super::ip_rules(c, &key, &r.ip_allow, &r.ip_deny),
            injections,
            validate,
            rate_limits: super::limits::route_limits(
                c,
                &key,
                &r.rate_limits,
                rate_limits,
                &config.rate_limits,
            ),
        });
    }
    (specs, keys)
}

fn validation(
    c: &mut Checker,
    key: &str,
    v: &super::ValidateConfig,
    action: &RouteAction,
) -> Arc<crate::perimeter::validate::Validation> {
    for t in &v.content_types {
        let (main, sub) = t.split_once('/').unwrap_or((t, ""));
        let token = |s: &str| !s.is_empty() && s.bytes().all(crate::http::is_token_byte);
        if !token(main) || !(sub == "*" || token(sub)) {
            c.problem(
                format!("{key}.validate.content_types"),
                format!("{t:?} is not a media type (type/subtype or type/*, no parameters)"),
            );
        }
    }
    for h in &v.required_headers {
        if h.is_empty() || !h.bytes().all(crate::http::is_token_byte) {
            c.problem(
                format!("{key}.validate.required_headers"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    if v.json && !matches!(action, RouteAction::Proxy { .. }) {
        c.problem(
            format!("{key}.validate.json"),
            "only routes with an upstream read request bodies",
        );
    }
    Arc::new(crate::perimeter::validate::Validation {
        content_types: v
            .content_types
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect(),
        required_headers: v
            .required_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        max_query_params: v.max_query_params,
        json: v.json,
    })
}

pub(super) fn with_hsts(
    edits: &CompiledTransform,
    hsts: Option<&super::HstsConfig>,
) -> CompiledTransform {
    let mut edits = edits.clone();
    if let Some(h) = hsts {
        edits.remove.push("strict-transport-security".to_string());
        edits.add.extend_from_slice(&hsts_line(h));
    }
    edits
}

pub(super) fn hsts_line(h: &super::HstsConfig) -> Vec<u8> {
    let mut line = format!(
        "strict-transport-security: max-age={}",
        h.max_age.0.as_secs()
    );
    if h.include_subdomains {
        line.push_str("; includeSubDomains");
    }
    if h.preload {
        line.push_str("; preload");
    }
    line.push_str("\r\n");
    line.into_bytes()
}

pub(super) fn route_path(c: &mut Checker, key: &str, r: &RouteConfig) -> PathMatch {
    let path = match (&r.path, &r.path_prefix) {
        (Some(_), Some(_)) => {
            c.problem(
                format!("{key}.path"),
                "give either path or path_prefix, not both",
            );
            return PathMatch::Prefix("/".into());
        }
        (Some(p), None) => PathMatch::Exact(p.clone()),
        (None, Some(p)) => PathMatch::Prefix(p.clone()),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let (field, text) = match &path {
        PathMatch::Exact(p) => ("path", p),
        PathMatch::Prefix(p) => ("path_prefix", p),
    };
    if !text.starts_with('/') || text.bytes().any(|b| b <= b' ' || b == b'?' || b >= 0x7f) {
        c.problem(
            format!("{key}.{field}"),
            format!("bad path {text:?}: must start with '/' and contain no spaces or '?'"),
        );
    }
    path
}

pub(super) fn route_action(
    c: &mut Checker,
    key: &str,
    r: &RouteConfig,
    upstreams: &[UpstreamSpec],
) -> RouteAction {
    match (&r.upstream, &r.direct_response) {
        (Some(name), None) => match upstreams.iter().position(|u| &u.name == name) {
            Some(upstream) => RouteAction::Proxy { upstream },
            None => {
                c.problem(
                    format!("{key}.upstream"),
                    format!("unknown upstream {name:?} (no [[upstreams]] entry has that name)"),
                );
                RouteAction::Proxy { upstream: 0 }
            }
        },
        (None, Some(d)) => {
            if !(200..=599).contains(&d.status) {
                c.problem(
                    format!("{key}.direct_response.status"),
                    "must be between 200 and 599",
                );
            }
            if !is_field_value(&d.content_type) {
                c.problem(
                    format!("{key}.direct_response.content_type"),
                    "must be a valid header value",
                );
            }
            RouteAction::Direct {
                status: d.status,
                content_type: d.content_type.clone(),
                body: d.body.clone(),
            }
        }
        (Some(_), Some(_)) => {
            c.problem(
                key.to_string(),
                "give either upstream or direct_response, not both",
            );
            RouteAction::Proxy { upstream: 0 }
        }
        (None, None) => {
            c.problem(key.to_string(), "needs upstream or direct_response");
            RouteAction::Proxy { upstream: 0 }
        }
    }
}

/// Fields that frame a message or hop one connection: the gateway always computes them.
const FRAMING_FIELDS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Request fields the gateway sets itself (its own value is the only true one).
const GATEWAY_REQUEST_FIELDS: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "x-client-cert-subject",
    "x-consumer",
    "forwarded",
];

const XFF_OWNED: &str =
    "is set by the gateway itself (remove it, or use the listener's x_forwarded_for)";

const GATEWAY_RESPONSE_FIELDS: &[&str] = &["x-request-id"];

fn upgrade_protocols(c: &mut Checker, key: &str, list: &[String]) -> Vec<String> {
    for (j, p) in list.iter().enumerate() {
        if !is_token(p) {
            c.problem(
                format!("{key}.upgrade_protocols[{j}]"),
                format!("bad protocol name {p:?}: expected a token such as \"websocket\""),
            );
        }
    }
    list.iter().map(|p| p.to_ascii_lowercase()).collect()
}

/// Configured edits may not touch framing or the gateway's own fields: a second
/// `content-length` would be a smuggling vector made by a config typo, and a second
/// `x-real-ip` a lie the origin cannot tell from the truth. (`x-forwarded-for` may be
/// removed or replaced: its removal is honoured.)
pub(super) fn reserved_field(name: &str, gateway_owned: &[&str]) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if FRAMING_FIELDS.contains(&lower.as_str()) {
        Some("is a framing or hop-by-hop field the gateway computes itself")
    } else if gateway_owned.contains(&lower.as_str()) {
        Some("is set by the gateway itself")
    } else {
        None
    }
}

pub(super) fn transform(
    c: &mut Checker,
    key: &str,
    t: &HeaderTransform,
    gateway_owned: &[&str],
) -> CompiledTransform {
    let mut out = CompiledTransform::default();
    for (j, name) in t.remove.iter().enumerate() {
        if !is_token(name) {
            c.problem(
                format!("{key}.remove[{j}]"),
                format!("bad header name {name:?}"),
            );
        } else if let Some(why) = reserved_field(name, gateway_owned) {
            c.problem(
                format!("{key}.remove[{j}]"),
                format!("{name:?} cannot be removed: it {why}"),
            );
        }
        out.remove.push(name.to_ascii_lowercase());
    }
    for (name, value) in &t.add {
        if !is_token(name) {
            c.problem(format!("{key}.add"), format!("bad header name {name:?}"));
        } else if let Some(why) = reserved_field(name, gateway_owned).or_else(|| {
            name.eq_ignore_ascii_case("x-forwarded-for")
                .then_some(XFF_OWNED)
        }) {
            c.problem(
                format!("{key}.add"),
                format!("{name:?} cannot be added: it {why}"),
            );
        }
        if !is_field_value(value) {
            c.problem(
                format!("{key}.add.{name}"),
                "header value must not contain control characters",
            );
        }
        out.remove.push(name.to_ascii_lowercase());
        out.add.extend_from_slice(name.as_bytes());
        out.add.extend_from_slice(b": ");
        out.add.extend_from_slice(value.as_bytes());
        out.add.extend_from_slice(b"\r\n");
    }
    out
}

pub(super) fn retry_on(c: &mut Checker, key: &str, list: &[String]) -> RetryOn {
    let mut on = RetryOn::default();
    for (j, item) in list.iter().enumerate() {
        match item.as_str() {
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "timeout" => on.timeout = true,
            "502" => on.status_502 = true,
            "503" => on.status_503 = true,
            "504" => on.status_504 = true,
            other => c.problem(
                format!("{key}.retry_on[{j}]"),
                format!(
                    "unknown condition {other:?}: expected connect-failure, reset, timeout, 502, 503 or 504"
                ),
            ),
        }
    }
    on
}
