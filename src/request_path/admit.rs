//! The policy stages, run synchronously over a [`RequestView`] (the parsed head, no sockets):
//! the HTTPS redirect, route lookup, authentication, authorization. Each refusal is a
//! [`Refused`] (a [`Reject`] and what the stages knew by then); what is admitted is an
//! [`Admitted`] route with the caller's identity. Later stages (client IP, limits,
//! validation) go into [`admit`], in their order.

use super::Reject;
use super::reject;
use crate::auth::{self, CacheCounters, Credentials, Denial, Found, Identity, ShardAuth, UrlKeys};
use crate::config::{RouteSpec, Snapshot};
use crate::http::{Known, RequestHead, push_decimal};
use crate::route::Match;
use std::sync::Arc;

/// A request as the policy stages see it: the head's bytes and parsed ranges, and what the
/// connection says about it. Nothing here can write to a socket.
pub struct RequestView<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    /// The listener answers everything with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// The verified client certificate's subject (mTLS listeners).
    pub client_subject: Option<&'a str>,
    /// The client's address (the peer, or what trusted proxies say).
    pub client_ip: std::net::IpAddr,
}

/// What the stages read besides the request: the config and this shard's state for it.
pub struct Policy<'a> {
    pub cfg: &'a Snapshot,
    pub auth: &'a ShardAuth,
    pub url_keys: &'a dyn UrlKeys,
    pub counters: CacheCounters<'a>,
    /// Unix seconds; `None`: read the clock, only when a route needs it.
    pub now: Option<u64>,
    /// This shard's rate-limit cells for the running config.
    pub limits: &'a crate::limit::ShardLimits,
}

/// What the policy stages let through: a route (by index in the snapshot), how much of
/// the path its prefix matched, and who the caller is (on routes with `auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub route: usize,
    pub prefix_len: usize,
    pub identity: Option<Arc<Identity>>,
    /// What the route's rate-limit policies said (for `RateLimit` on the response).
    pub limits: crate::limit::Decisions,
}

/// A refusal, with the route when one had matched and the denial when authentication or
/// authorization refused (for metrics and the audit log).
#[derive(Debug)]
pub struct Refused {
    pub reject: Reject,
    pub route: Option<usize>,
    pub denial: Option<Denial>,
}

impl From<Reject> for Refused {
    fn from(reject: Reject) -> Refused {
        Refused {
            reject,
            route: None,
            denial: None,
        }
    }
}

const NO_HOST_FOR_REDIRECT: Reject =
    Reject::new(400, "bad_request", "missing host for the https redirect");

/// Runs the policy stages in order: the first refusal wins. Concurrency slots a rate-limit
/// policy grants go to `held`, for the exchange's end.
pub fn admit(
    p: &Policy,
    req: &RequestView,
    held: &mut crate::limit::Held,
) -> Result<Admitted, Refused> {
    if let Some(port) = req.redirect_https {
        return Err(redirect_to_https(req, port).into());
    }
    let (route, prefix_len) = route(p.cfg, req)?;
    if p.cfg.routes[route].injections.is_some() && req.head.method(req.buf) == b"TRACE" {
        // An origin answering TRACE would echo the injected credentials to the client.
        return Err(Refused {
            reject: reject::method_not_allowed("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            route: Some(route),
            denial: None,
        });
    }
    let rules = &p.cfg.routes[route].ip_rules;
    if !rules.is_empty() && !rules.permits(req.client_ip) {
        return Err(Refused {
            reject: reject::IP_DENIED,
            route: Some(route),
            denial: None,
        });
    }
    let identity = match &p.cfg.routes[route].auth {
        None => None,
        Some(rules) => {
            let refused = |denial: Denial| Refused {
                reject: reject::denied(denial, rules),
                route: Some(route),
                denial: Some(denial),
            };
            let who = auth::authenticate(
                &p.cfg.auth,
                p.auth,
                rules,
                req,
                p.url_keys,
                &p.counters,
                p.now.unwrap_or_else(auth::unix_now),
            )
            .map_err(refused)?;
            auth::authorize(rules, &who).map_err(refused)?;
            Some(who)
        }
    };
    if let Some(injections) = &p.cfg.routes[route].injections
        && injections.needs_consumer
        && !has_consumer_secrets(p.cfg, injections, identity.as_deref())
    {
        return Err(Refused {
            reject: reject::NO_UPSTREAM_CREDENTIAL,
            route: Some(route),
            denial: None,
        });
    }
    let spec = &p.cfg.routes[route];
    let limits = if spec.rate_limits.is_empty() {
        crate::limit::Decisions::default()
    } else {
        let input = crate::limit::KeyInput {
            consumer: identity.as_deref().map(|i| &*i.consumer),
            client_ip: req.client_ip,
            route: &spec.name,
            buf: req.buf,
            head: req.head,
        };
        if let Some(name) = p.limits.ambiguous_key(&spec.rate_limits, &input) {
            return Err(Refused {
                reject: Reject::repeated_key_header(&name),
                route: Some(route),
                denial: None,
            });
        }
        let now = crate::limit::gcra::Clocks::now();
        p.limits
            .admit(&spec.rate_limits, &input, now, held)
            .map_err(|refusal| Refused {
                reject: Reject::rate_limited(p.limits, &refusal),
                route: Some(route),
                denial: None,
            })?
    };
    if let Some(rules) = &p.cfg.routes[route].validate {
        rules
            .check_head(req.buf, req.head)
            .map_err(|invalid| Refused {
                reject: Reject::invalid(invalid),
                route: Some(route),
                denial: None,
            })?;
    }
    Ok(Admitted {
        route,
        prefix_len,
        identity,
        limits,
    })
}

/// Whether the caller is a configured consumer holding every `consumer:` secret the route
/// injects.
fn has_consumer_secrets(
    cfg: &Snapshot,
    injections: &crate::perimeter::inject::Injections,
    who: Option<&Identity>,
) -> bool {
    let Some(consumer) = who
        .and_then(|w| cfg.auth.consumer_by_name.get(&*w.consumer))
        .map(|&i| &cfg.auth.consumers[i])
    else {
        return false;
    };
    injections.all().all(|i| match &i.source {
        crate::perimeter::inject::SecretSource::Consumer(name) => {
            consumer.secrets.contains_key(name)
        }
        _ => true,
    })
}

impl Credentials for RequestView<'_> {
    fn header(&self, name: &[u8]) -> Found<'_> {
        let mut found = Found::None;
        for field in &self.head.fields {
            if self.buf[field.name.clone()].eq_ignore_ascii_case(name) {
                if found != Found::None {
                    return Found::Many;
                }
                found = Found::One(self.buf[field.value.clone()].trim_ascii());
            }
        }
        found
    }

    fn cookie(&self, name: &[u8]) -> Found<'_> {
        let mut found = Found::None;
        for (field, &kind) in self.head.fields.iter().zip(&self.head.kinds) {
            if kind != Known::Cookie {
                continue;
            }
            for pair in self.buf[field.value.clone()].split(|&b| b == b';') {
                if let Some((n, value)) = split_pair(pair)
                    && auth::name_is(n, name)
                {
                    if found != Found::None {
                        return Found::Many;
                    }
                    found = Found::One(value.trim_ascii());
                }
            }
        }
        found
    }

    fn query(&self, name: &[u8]) -> Found<'_> {
        query_param(&self.buf[self.head.query.clone()], name)
    }

    fn client_subject(&self) -> Option<&str> {
        self.client_subject
    }
}

/// A parameter of a query string (`?a=1&b=2`), as sent (not percent-decoded).
pub(super) fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Found<'q> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    let mut found = Found::None;
    for pair in query.split(|&b| b == b'&') {
        if let Some((n, value)) = split_pair(pair)
            && auth::name_is(n, name)
        {
            if found != Found::None {
                return Found::Many;
            }
            found = Found::One(value);
        }
    }
    found
}

/// `name=value` split at the first `=`.
pub(super) fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((&pair[..eq], &pair[eq + 1..]))
}

/// `308` to the same host (without its port) and target over HTTPS.
fn redirect_to_https(req: &RequestView, port: u16) -> Reject {
    let mut host_buf = [0u8; 256];
    let host = request_host(req, &mut host_buf);
    if host.is_empty() {
        return NO_HOST_FOR_REDIRECT;
    }
    let (path, query) = (
        &req.buf[req.head.path.clone()],
        &req.buf[req.head.query.clone()],
    );
    let mut location = Vec::with_capacity(host.len() + path.len() + query.len() + 20);
    location.extend_from_slice(b"https://");
    location.extend_from_slice(host.as_bytes());
    if port != 443 {
        location.push(b':');
        push_decimal(&mut location, u64::from(port));
    }
    location.extend_from_slice(path);
    location.extend_from_slice(query);
    Reject::new(308, "redirect_https", "use https").with_header(b"location", &location)
}

/// Host (from an absolute-form target, else `Host`, port dropped, lower-cased), path and
/// method to a route: (its index, the length of the prefix matched).
fn route(cfg: &Snapshot, req: &RequestView) -> Result<(usize, usize), Reject> {
    let mut host_buf = [0u8; 256];
    let host = request_host(req, &mut host_buf);
    let path =
        std::str::from_utf8(&req.buf[req.head.path.clone()]).map_err(|_| reject::BAD_PATH)?;
    let method = std::str::from_utf8(req.head.method(req.buf)).map_err(|_| reject::BAD_PATH)?;
    match cfg.router.lookup(host, path, method) {
        Match::Found { route, prefix_len } => Ok((route, prefix_len)),
        Match::MethodNotAllowed { allow } => Err(reject::method_not_allowed(&allow)),
        Match::NotFound => Err(reject::NO_ROUTE),
    }
}

/// Whether every protocol an `Upgrade` field offers is on the route's allow-list.
pub(super) fn offers_only_allowed(route: &RouteSpec, offer: &[u8]) -> bool {
    offer
        .split(|&b| b == b',')
        .all(|p| route.allows_upgrade(p.trim_ascii()))
}

/// The request's host: from an absolute-form target, else `Host`; port dropped, lower-cased.
fn request_host<'a>(req: &RequestView, out: &'a mut [u8; 256]) -> &'a str {
    let raw = req
        .head
        .target_authority
        .clone()
        .or_else(|| req.head.host.clone())
        .map_or(&b""[..], |r| &req.buf[r]);
    lower_host_without_port(raw, out)
}

fn lower_host_without_port<'a>(raw: &[u8], out: &'a mut [u8; 256]) -> &'a str {
    let (without_port, _) = split_host_port(raw);
    if without_port.len() > out.len() {
        return "";
    }
    let out = &mut out[..without_port.len()];
    for (o, &b) in out.iter_mut().zip(without_port) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).unwrap_or("")
}

/// A host as sent (`name`, `name:port`, `[v6]:port`) split into the name, without one
/// trailing dot (`example.com.` is `example.com`), and the `:port` part (maybe empty).
pub(super) fn split_host_port(raw: &[u8]) -> (&[u8], &[u8]) {
    let colon = if raw.first() == Some(&b'[') {
        // [v6]:port keeps its brackets
        raw.iter()
            .position(|&b| b == b']')
            .map_or(raw.len(), |end| end + 1)
    } else {
        raw.iter().rposition(|&b| b == b':').unwrap_or(raw.len())
    };
    let (name, port) = raw.split_at(colon);
    (name.strip_suffix(b".").unwrap_or(name), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::http::HeadLimits;
    use crate::observe::metrics::Counter;
    use std::path::Path;

    const CONFIG: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[[upstreams]]
name = "api"
targets = ["127.0.0.1:1"]

[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/v1"
methods = ["GET", "POST"]
upstream = "api"

[[routes]]
name = "hello"
path = "/hello"
direct_response = { status = 200, body = "hi" }
"#;

    fn snapshot() -> Snapshot {
        load_str(Path::new("admit.toml"), CONFIG).unwrap()
    }

    /// Parses `raw` and runs the policy stages on it, as the request path does.
    fn admit_raw(
        cfg: &Snapshot,
        raw: &str,
        redirect_https: Option<u16>,
    ) -> Result<Admitted, Reject> {
        let mut buf = raw.as_bytes().to_vec();
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        };
        assert_eq!(head.parse(&buf, &limits), Ok(true), "{raw:?}");
        head.normalize_path(&mut buf, false).unwrap();
        let view = RequestView {
            buf: &buf,
            head: &head,
            redirect_https,
            client_subject: None,
            client_ip: "192.0.2.1".parse().unwrap(),
        };
        let auth = ShardAuth::new(&cfg.auth);
        let (hits, misses) = (Counter::default(), Counter::default());
        let policy = Policy {
            cfg,
            auth: &auth,
            url_keys: &NoUrlKeys,
            counters: CacheCounters {
                hits: &hits,
                misses: &misses,
            },
            now: Some(1_800_000_000),
            limits: &crate::limit::ShardLimits::new(),
        };
        admit(&policy, &view, &mut Default::default()).map_err(|r| r.reject)
    }

    struct NoUrlKeys;

    impl UrlKeys for NoUrlKeys {
        fn keys(&self, _: &str) -> Option<Arc<crate::auth::jwt::KeySet>> {
            None
        }
        fn refetch(&self, _: &str) {}
    }

    #[test]
    fn routes_by_host_without_port_or_case_and_by_prefix() {
        let cfg = snapshot();
        let found = admit_raw(
            &cfg,
            "GET /v1/users HTTP/1.1\r\nHost: API.Example.com.:8443\r\n\r\n",
            None,
        )
        .unwrap();
        assert_eq!(
            found,
            Admitted {
                route: 0,
                prefix_len: 3,
                identity: None,
                limits: Default::default(),
            }
        );
        let direct = admit_raw(&cfg, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", None).unwrap();
        assert_eq!(cfg.routes[direct.route].name, "hello");
    }

    #[test]
    fn refusals_carry_their_status_kind_and_headers() {
        let cfg = snapshot();
        let table: &[(&str, u16, &str, &[u8])] = &[
            (
                "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                404,
                "no_route",
                b"",
            ),
            (
                "DELETE /v1/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                405,
                "method_not_allowed",
                b"allow: GET, HEAD, POST\r\n",
            ),
            (
                "GET /v1/x HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
                404,
                "no_route",
                b"",
            ),
        ];
        for (raw, status, kind, headers) in table {
            let refusal = admit_raw(&cfg, raw, None).unwrap_err();
            assert_eq!(
                (refusal.status, refusal.kind, &refusal.headers[..]),
                (*status, *kind, *headers),
                "{raw:?}"
            );
            assert!(
                !refusal.closes,
                "{raw:?}: a well-formed request keeps its connection"
            );
        }
    }

    #[test]
    fn a_redirecting_listener_sends_every_request_to_https() {
        let cfg = snapshot();
        let r = admit_raw(
            &cfg,
            "GET /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n",
            Some(443),
        )
        .unwrap_err();
        assert_eq!((r.status, r.kind), (308, "redirect_https"));
        assert_eq!(r.headers, b"location: https://example.com/a/b?c=d\r\n");
        let r = admit_raw(&cfg, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", Some(8443)).unwrap_err();
        assert_eq!(r.headers, b"location: https://h:8443/\r\n");
        // HTTP/1.0 without Host: nothing to redirect to.
        let r = admit_raw(&cfg, "GET / HTTP/1.0\r\n\r\n", Some(443)).unwrap_err();
        assert_eq!(r.status, 400);
    }

    #[test]
    fn hosts_split_from_ports_and_one_trailing_dot() {
        assert_eq!(split_host_port(b"a.b:80"), (&b"a.b"[..], &b":80"[..]));
        assert_eq!(split_host_port(b"a.b."), (&b"a.b"[..], &b""[..]));
        assert_eq!(split_host_port(b"[::1]:80"), (&b"[::1]"[..], &b":80"[..]));
        let mut out = [0u8; 256];
        assert_eq!(
            lower_host_without_port(b"EXAMPLE.com:1", &mut out),
            "example.com"
        );
        let long = vec![b'a'; 300];
        assert_eq!(lower_host_without_port(&long, &mut out), "");
    }
}
