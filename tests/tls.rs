//! TLS termination through the real binary, with certificates generated in the test: SNI
//! choice and its default, TLS 1.1 refused, mTLS required/optional, redirect to HTTPS, HSTS,
//! `X-Forwarded-Proto: https`, resumption, handshake timeout, TLS upstreams, config errors.

mod common;
use common::pki::*;
use common::*;
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tls_get(tls: &mut Tls, path: &str, extra: &str) -> Option<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n");
    tls.write_all(req.as_bytes()).ok()?;
    ResponseReader::default().try_read(tls, false)
}

fn peer_cert(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A certificate for `a.test` signed by `ca`, written to a fresh directory.
fn a_test_cert(ca: &Ca) -> (PathBuf, PathBuf) {
    let dir = temp_dir("tls");
    write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    )
}

/// A TLS listener with `certs` proxying everything to `origin`.
fn proxy_gateway(
    certs: &[(PathBuf, PathBuf)],
    tls_extra: &str,
    origin: std::net::SocketAddr,
    route_extra: &str,
) -> Gateway {
    Gateway::start(&format!(
        "{}{}{}",
        base_config(),
        tls_listener(certs, tls_extra),
        proxy_tail(origin, route_extra)
    ))
}

/// A TLS listener with `certs` and a direct `/hello` route answering `hi`.
fn hello_gateway(certs: &[(PathBuf, PathBuf)], tls_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n",
        base_config(),
        tls_listener(certs, tls_extra)
    ))
}

/// A client that speaks TLS 1.2 only.
fn tls12_client(ca: &Ca) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    )
}

fn proxy_tail(origin: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n{route_extra}\n"
    )
}

#[test]
fn terminates_tls_and_tells_the_origin_it_was_https() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let origin = Origin::echo_path();
    let gw = proxy_gateway(&[a], "", origin.addr, "");
    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for i in 0..3 {
        let r = tls_get(&mut tls, &format!("/x{i}"), "").expect("response over TLS");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("path=/x{i}"));
    }
    let received = origin.received();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[0].header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    // keep-alive over TLS: one client connection carried all three
    assert_eq!(origin.connection_count(), 1);
}

#[test]
fn sni_chooses_the_certificate_and_the_first_is_the_default() {
    let ca = Ca::new("ringgate test ca");
    let dir = temp_dir("tls");
    let a_leaf = ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256);
    let b_leaf = ca.leaf(&["b.test"], "b", &PKCS_ED25519);
    let w_leaf = ca.leaf(&["*.wild.test"], "wild", &PKCS_ECDSA_P384_SHA384);
    let certs = [
        write_leaf(&dir, "a", &a_leaf),
        write_leaf(&dir, "b", &b_leaf),
        write_leaf(&dir, "w", &w_leaf),
    ];
    let config = format!(
        "{}{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"hi\" }}\n",
        base_config(),
        tls_listener(&certs, "")
    );
    let gw = Gateway::start(&config);
    let client = client_config(&ca, None);
    for (sni, expected) in [
        ("a.test", &a_leaf.der),
        ("B.TEST", &b_leaf.der),
        ("x.wild.test", &w_leaf.der),
    ] {
        let mut tls = tls_connect(gw.listen, client.clone(), sni).unwrap();
        assert_eq!(&peer_cert(&tls), expected, "certificate for {sni}");
        assert_eq!(tls_get(&mut tls, "/hello", "").unwrap().text(), "hi");
    }
    // An IP address sends no SNI: the default (first) certificate answers, which the client
    // then rejects because it does not name 127.0.0.1.
    let err = tls_connect(gw.listen, client.clone(), "127.0.0.1").unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // An unknown name also gets the default certificate.
    let mut no_verify = (*client).clone();
    no_verify
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny));
    let tls = tls_connect(gw.listen, Arc::new(no_verify.clone()), "other.test").unwrap();
    assert_eq!(peer_cert(&tls), a_leaf.der);
    let tls = tls_connect(gw.listen, Arc::new(no_verify), "127.0.0.1").unwrap();
    assert_eq!(peer_cert(&tls), a_leaf.der);
}

/// A verifier that records nothing and accepts any certificate (to see which one is served).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.1 ClientHello (no supported_versions extension), written out byte by byte.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two TLS 1.0-era suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[test]
fn tls_1_1_is_refused_with_an_alert_and_tls_1_2_works() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let origin = Origin::echo_path();
    let gw = proxy_gateway(&[a], "", origin.addr, "");
    let mut s = gw.connect();
    s.write_all(&tls11_client_hello()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.is_empty(), "expected an alert");
    assert_eq!(answer[0], 0x15, "alert record, got {answer:?}");
    // protocol_version (70) or handshake_failure (40), fatal
    assert_eq!(answer[5], 2, "fatal alert: {answer:?}");
    assert!(matches!(answer[6], 70 | 40), "alert description {answer:?}");

    let tls12 = tls12_client(&ca);
    let mut tls = tls_connect(gw.listen, tls12, "a.test").unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls_get(&mut tls, "/v12", "").unwrap().status, 200);
    assert_eq!(origin.received().len(), 1);
}

#[test]
fn min_version_1_3_refuses_tls_1_2() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let gw = hello_gateway(&[a], "min_version = \"1.3\"");
    let tls12 = tls12_client(&ca);
    assert!(tls_connect(gw.listen, tls12, "a.test").is_err());
    let tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

fn mtls_gateway(client_auth: &str) -> (Ca, Ca, Origin, Gateway) {
    let ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let dir = temp_dir("mtls");
    let a = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let client_ca_path = dir.join("clients.pem");
    std::fs::write(&client_ca_path, &client_ca.pem).unwrap();
    let origin = Origin::start(|r| {
        let subject = r.header("x-client-cert-subject").unwrap_or_default();
        ok(format!("subject={subject}").as_bytes())
    });
    let tls_extra = format!(
        "client_ca = {:?}\nclient_auth = \"{client_auth}\"",
        client_ca_path.display().to_string()
    );
    let gw = proxy_gateway(&[a], &tls_extra, origin.addr, "");
    (ca, client_ca, origin, gw)
}

/// In TLS 1.3 the server checks the client certificate after the client thinks the handshake
/// is done, so a refusal shows on the first exchange.
fn refused(result: std::io::Result<Tls>) -> bool {
    match result {
        Err(_) => true,
        Ok(mut tls) => tls_get(&mut tls, "/", "").is_none(),
    }
}

#[test]
fn mtls_required_refuses_clients_without_a_valid_certificate() {
    let (ca, client_ca, origin, gw) = mtls_gateway("required");
    assert!(refused(tls_connect(
        gw.listen,
        client_config(&ca, None),
        "a.test"
    )));
    // a certificate from a CA the listener does not trust
    let stranger = ca.leaf(&[], "stranger", &PKCS_ECDSA_P256_SHA256);
    assert!(refused(tls_connect(
        gw.listen,
        client_config(&ca, Some(&stranger)),
        "a.test"
    )));
    assert!(origin.received().is_empty(), "nothing reached the origin");

    let alice = client_ca.leaf(&[], "alice", &PKCS_ECDSA_P256_SHA256);
    let mut tls = tls_connect(gw.listen, client_config(&ca, Some(&alice)), "a.test").unwrap();
    let r = tls_get(&mut tls, "/", "X-Client-Cert-Subject: CN=mallory\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "subject=CN=alice");
    assert_eq!(
        origin.received()[0].headers_named("x-client-cert-subject"),
        1
    );
}

#[test]
fn mtls_as_an_auth_method_names_the_consumer_by_its_cn_and_roles_apply() {
    let ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let dir = temp_dir("mtls-auth");
    let a = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let client_ca_path = dir.join("clients.pem");
    std::fs::write(&client_ca_path, &client_ca.pem).unwrap();
    let origin = Origin::start(|r| {
        ok(format!("consumer={}", r.header("x-consumer").unwrap_or_default()).as_bytes())
    });
    let gw = proxy_gateway(
        &[a],
        &format!(
            "client_ca = {:?}\nclient_auth = \"optional\"",
            client_ca_path.display().to_string()
        ),
        origin.addr,
        "auth = [\"mtls\"]\nrequire_roles = [\"ops\"]\n\n[[consumers]]\nname = \"bob\"\nroles = [\"ops\"]\n",
    );
    let mut anonymous = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    assert_eq!(
        tls_get(&mut anonymous, "/", "x-consumer: bob\r\n")
            .unwrap()
            .status,
        403
    );
    let bob = client_ca.leaf(&[], "bob", &PKCS_ECDSA_P256_SHA256);
    let mut tls = tls_connect(gw.listen, client_config(&ca, Some(&bob)), "a.test").unwrap();
    let r = tls_get(&mut tls, "/", "").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "consumer=bob"));
    let carol = client_ca.leaf(&[], "carol", &PKCS_ECDSA_P256_SHA256);
    let mut tls = tls_connect(gw.listen, client_config(&ca, Some(&carol)), "a.test").unwrap();
    assert_eq!(
        tls_get(&mut tls, "/", "").unwrap().status,
        403,
        "carol has no role ops"
    );
    assert_eq!(origin.received().len(), 1);
}

#[test]
fn mtls_optional_accepts_clients_without_a_certificate() {
    let (ca, client_ca, origin, gw) = mtls_gateway("optional");
    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    let r = tls_get(&mut tls, "/", "X-Client-Cert-Subject: CN=mallory\r\n").unwrap();
    assert_eq!(r.text(), "subject=", "a client-supplied subject is dropped");
    let bob = client_ca.leaf(&[], "bob", &PKCS_ECDSA_P256_SHA256);
    let mut tls = tls_connect(gw.listen, client_config(&ca, Some(&bob)), "a.test").unwrap();
    assert_eq!(tls_get(&mut tls, "/", "").unwrap().text(), "subject=CN=bob");
    assert_eq!(origin.received().len(), 2);
}

#[test]
fn plain_listener_redirects_to_https_and_hsts_is_sent_only_over_tls() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let plain_port = free_port();
    let redirect_port = free_port();
    let origin = Origin::echo_path();
    let config = format!(
        "{}{}[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:{plain_port}\"\n\n[[listeners]]\nname = \"redirect\"\nbind = \"127.0.0.1:{redirect_port}\"\nredirect_https = {{ port = 8443 }}\n\n{}",
        base_config(),
        tls_listener(&[a], ""),
        proxy_tail(
            origin.addr,
            "hsts = { max_age = \"365d\", include_subdomains = true }"
        )
    );
    let gw = Gateway::start(&config);
    assert!(wait_for_port(
        format!("127.0.0.1:{redirect_port}").parse().unwrap(),
        Duration::from_secs(10)
    ));
    let mut s = TcpStream::connect(("127.0.0.1", redirect_port)).unwrap();
    s.write_all(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n")
        .unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://example.com:8443/a/b?x=1")
    );
    // keep-alive survives a redirect without a body
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.header("location"), Some("https://example.com:8443/"));
    assert!(origin.received().is_empty());

    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    let r = tls_get(&mut tls, "/", "").unwrap();
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let mut s = TcpStream::connect(("127.0.0.1", plain_port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = ResponseReader::default().read(&mut s, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
}

#[test]
fn sessions_resume_across_connections() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let gw = hello_gateway(&[a], "");
    let client = client_config(&ca, None);
    let mut first = tls_connect(gw.listen, client.clone(), "a.test").unwrap();
    // reading a response also receives the session tickets sent after the handshake
    assert_eq!(tls_get(&mut first, "/hello", "").unwrap().text(), "hi");
    // Tickets work on any shard; several tries land on both shards.
    for _ in 0..4 {
        let mut next = tls_connect(gw.listen, client.clone(), "a.test").unwrap();
        assert_eq!(
            next.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        assert_eq!(tls_get(&mut next, "/hello", "").unwrap().text(), "hi");
    }
}

#[test]
fn a_stalled_handshake_is_dropped_on_time_without_disturbing_others() {
    let ca = Ca::new("ringgate test ca");
    let a = a_test_cert(&ca);
    let gw = hello_gateway(&[a], "handshake_timeout = \"1s\"");
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..4).map(|_| gw.connect()).collect();
    // half a ClientHello, then silence
    for s in &mut stalled {
        s.write_all(&tls11_client_hello()[..20]).unwrap();
    }
    let mut tls = tls_connect(gw.listen, client_config(&ca, None), "a.test").unwrap();
    assert_eq!(tls_get(&mut tls, "/hello", "").unwrap().text(), "hi");
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed by the gateway");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

#[test]
fn tls_upstream_is_verified_against_its_ca() {
    let ca = Ca::new("origin ca");
    let other_ca = Ca::new("unrelated ca");
    let dir = temp_dir("tls-up");
    let origin_cert = write_leaf(
        &dir,
        "origin",
        &ca.leaf(&["origin.test"], "origin", &PKCS_ECDSA_P256_SHA256),
    );
    // The TLS origin is a second ringgate answering directly.
    let origin = Gateway::start(&format!(
        "{}{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"from tls origin\" }}\n",
        base_config(),
        tls_listener(&[origin_cert], "")
    ));
    let ca_file = dir.join("origin-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let wrong_ca_file = dir.join("other-ca.pem");
    std::fs::write(&wrong_ca_file, &other_ca.pem).unwrap();
    let upstream = |name: &str, ca: &Path| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\ntargets = [\"{}\"]\ntls = true\ntls_server_name = \"origin.test\"\ntls_ca_file = {:?}\n\n",
            origin.listen,
            ca.display().to_string()
        )
    };
    let gw = Gateway::start(&format!(
        "{}{}{}[[routes]]\nname = \"good\"\npath = \"/hello\"\nupstream = \"good\"\n\n[[routes]]\nname = \"bad\"\npath_prefix = \"/bad\"\nupstream = \"bad\"\nstrip_prefix = true\n",
        base_config(),
        upstream("good", &ca_file),
        upstream("bad", &wrong_ca_file)
    ));
    for _ in 0..3 {
        let r = gw.get("/hello");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "from tls origin");
    }
    let r = gw.get("/bad/hello");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("TLS"), "{}", r.text());
}

fn check(config: &str) -> (i32, String) {
    let dir = temp_dir("tls-check");
    let path = dir.join("ringgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn bad_certificates_are_config_errors_naming_the_file() {
    let ca = Ca::new("ringgate test ca");
    let dir = temp_dir("tls-bad");
    let (a_cert, a_key) = write_leaf(
        &dir,
        "a",
        &ca.leaf(&["a.test"], "a", &PKCS_ECDSA_P256_SHA256),
    );
    let (_, b_key) = write_leaf(
        &dir,
        "b",
        &ca.leaf(&["b.test"], "b", &PKCS_ECDSA_P256_SHA256),
    );
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let listener = |cert: &Path, key: &Path| {
        format!(
            "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:1\"\n[listeners.tls]\ncertificates = [\n  {{ cert = {:?}, key = {:?} }},\n]\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let (code, out) = check(&listener(&missing, &a_key));
    assert_ne!(code, 0);
    assert!(
        out.contains(":6: listeners[0].tls.certificates[0].cert"),
        "{out}"
    );
    assert!(out.contains("missing.pem"), "{out}");
    let (code, out) = check(&listener(&garbage, &a_key));
    assert_ne!(code, 0);
    assert!(
        out.contains("garbage.pem") && out.contains("CERTIFICATE"),
        "{out}"
    );
    let (code, out) = check(&listener(&a_cert, &garbage));
    assert_ne!(code, 0);
    assert!(
        out.contains("listeners[0].tls.certificates[0].key") && out.contains("garbage.pem"),
        "{out}"
    );
    let (code, out) = check(&listener(&a_cert, &b_key));
    assert_ne!(code, 0);
    assert!(out.contains("does not match"), "{out}");
    assert!(out.contains("b.key") && out.contains("a.pem"), "{out}");
    let (code, out) = check(&listener(&a_cert, &a_key));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn rsa_certificates_from_openssl_are_served() {
    let dir = temp_dir("tls-rsa");
    let (cert, key) = (dir.join("rsa.pem"), dir.join("rsa.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=rsa.test",
        ])
        .args(["-addext", "subjectAltName=DNS:rsa.test"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success());
    let config = format!(
        "{}{}[[routes]]\nname = \"hello\"\npath = \"/hello\"\ndirect_response = {{ status = 200, body = \"rsa\" }}\n",
        base_config(),
        tls_listener(&[(cert.clone(), key)], "")
    );
    let gw = Gateway::start(&config);
    let der = CertificateDer::from_pem_file_compat(&cert);
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut tls = tls_connect(gw.listen, Arc::new(client), "rsa.test").unwrap();
    let r = tls_get(&mut tls, "/hello", "").unwrap();
    assert_eq!(r.text(), "rsa");
}

trait FromPemFile {
    fn from_pem_file_compat(path: &Path) -> Self;
}

impl FromPemFile for CertificateDer<'static> {
    fn from_pem_file_compat(path: &Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path).unwrap()
    }
}

/// A TLS origin (rustls, blocking) answering `200 ok` to every request; counts connections.
fn tls_origin(leaf: &Leaf) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let config = Arc::new(server_config(leaf));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::AcqRel);
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[test]
fn tls_upstream_connections_are_kept_alive_and_reused() {
    let ca = Ca::new("origin ca");
    let leaf = ca.leaf(&["origin.test"], "origin", &PKCS_ECDSA_P256_SHA256);
    let (origin, connections) = tls_origin(&leaf);
    let dir = temp_dir("tls-pool");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"o\"\ntargets = [\"{origin}\"]\ntls = true\ntls_server_name = \"origin.test\"\ntls_ca_file = {:?}\n\n[[routes]]\nname = \"all\"\nupstream = \"o\"\n",
        base_config(),
        ca_file.display().to_string()
    ));
    // one client connection: one shard, whose pool should carry every request
    let mut s = gw.connect();
    let mut reader = ResponseReader::default();
    for i in 0..10 {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let r = reader.read(&mut s, false);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::Acquire),
        1,
        "one TLS connection to the origin carried all ten requests"
    );
}
