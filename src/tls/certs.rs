//! Building rustls configs from the config file: PEM loading, SNI choice, mTLS, versions.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TLS listener's compiled settings.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    /// Whether client certificates are checked (their subject is then passed on).
    pub mtls: bool,
}

/// A TLS upstream's compiled settings.
#[derive(Debug)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// A TLS setting that cannot be used; `key` is relative to the `tls` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    pub key: String,
    pub message: String,
}

impl TlsProblem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        TlsProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a valid PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE found", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{}: no usable private key (PKCS#8, PKCS#1 RSA or SEC1 EC, PEM): {e}",
            path.display()
        )
    })
}

/// DNS names a certificate serves: its subjectAltName DNS entries, else its subject CN.
fn dns_names(cert: &CertificateDer) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The subject of a DER certificate as `CN=…, O=…`, for later stages (authorization).
pub fn subject_of(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in parsed.subject().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push_str(" + ");
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(name) => out.push_str(name),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_rdn_value(value, &mut out),
                // Not a string type: RFC 4514 §2.4 hex form of the value's bytes.
                Err(_) => {
                    out.push('#');
                    for b in attr.as_slice() {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    Some(out)
}

/// RFC 4514 §2.4 escaping of one attribute value, extended so the result is printable ASCII
/// (it becomes a header value): `,+"\<>;` get a backslash, a leading `#` or space and a
/// trailing space too, and every byte outside 0x20..0x7e (CR and LF included) becomes `\XX`.
/// A CN like `alice\r\nx-injected: evil` or `mallory, O=admins` then cannot forge a header
/// line or an RDN.
fn escape_rdn_value(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let edge_space = b == b' ' && (i == 0 || i + 1 == bytes.len());
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            _ if edge_space => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
}

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then the default (the
/// first configured certificate) for clients without SNI or with a name none serves.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn find(&self, name: &str) -> &Arc<CertifiedKey> {
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k;
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.find(name).clone(),
            None => self.default.clone(),
        })
    }
}

fn certified_key(
    base: &Path,
    i: usize,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsProblem> {
    let cert_key = format!("certificates[{i}].cert");
    let key_key = format!("certificates[{i}].key");
    let cert_path = resolve_path(base, cert);
    let key_path = resolve_path(base, key);
    let chain = load_certs(&cert_path).map_err(|m| TlsProblem::new(&cert_key, m))?;
    let names = dns_names(&chain[0])
        .map_err(|m| TlsProblem::new(&cert_key, format!("{}: {m}", cert_path.display())))?;
    let private = load_key(&key_path).map_err(|m| TlsProblem::new(&key_key, m))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| {
            TlsProblem::new(
                &key_key,
                format!("{}: unsupported private key: {e}", key_path.display()),
            )
        })?;
    let ck = CertifiedKey::new(chain, signing);
    if let Err(e) = ck.keys_match() {
        let unknown = matches!(
            e,
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)
        );
        if !unknown {
            return Err(TlsProblem::new(
                &key_key,
                format!(
                    "{} does not match the certificate in {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            ));
        }
    }
    Ok((Arc::new(ck), names))
}

/// What a TLS listener is built from: the config compiler fills it in from
/// `[listeners.tls]` (this module knows nothing of the config file).
pub struct ServerTlsSettings<'a> {
    /// (certificate chain PEM, private key PEM) pairs; the first is the default for SNI.
    pub certificates: Vec<(&'a Path, &'a Path)>,
    /// Accept TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
    /// A PEM bundle of CAs client certificates must chain to (mTLS).
    pub client_ca: Option<&'a Path>,
    /// Without a client certificate the handshake fails (else it is optional).
    pub client_cert_required: bool,
    pub alpn: &'a [String],
    pub handshake_timeout: std::time::Duration,
}

fn sni_resolver(
    config: &ServerTlsSettings,
    base: &Path,
    provider: &CryptoProvider,
    problems: &mut Vec<TlsProblem>,
) -> Option<SniResolver> {
    if config.certificates.is_empty() {
        problems.push(TlsProblem::new(
            "certificates",
            "at least one { cert, key } pair is required",
        ));
        return None;
    }
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for (i, (cert, key)) in config.certificates.iter().enumerate() {
        match certified_key(base, i, cert, key, provider) {
            Ok((ck, names)) => {
                for name in names {
                    match name.strip_prefix("*.") {
                        Some(parent) => wildcard.entry(parent.to_string()),
                        None => exact.entry(name),
                    }
                    .or_insert_with(|| ck.clone());
                }
                default.get_or_insert(ck);
            }
            Err(p) => problems.push(p),
        }
    }
    Some(SniResolver {
        exact,
        wildcard,
        default: default?,
    })
}

fn client_verifier(
    config: &ServerTlsSettings,
    base: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsProblem> {
    let Some(ca) = config.client_ca else {
        return Ok(None);
    };
    let path = resolve_path(base, ca);
    let roots = root_store(&path).map_err(|m| TlsProblem::new("client_ca", m))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if config.client_cert_required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| TlsProblem::new("client_ca", format!("{}: {e}", path.display())))
}

/// CAs trusted beside the Mozilla roots by every verifying upstream that names no
/// `tls_ca_file`: set once, by `ringgate demo` for its self-signed origins, so that every
/// compile of the config (a reload too) trusts them.
static EXTRA_ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();

/// Adds the certificates of a PEM file to [`EXTRA_ROOTS`] (once per process).
pub fn trust_also(pem: &Path) -> Result<(), String> {
    let roots = root_store(pem)?;
    EXTRA_ROOTS
        .set(roots)
        .map_err(|_| "extra roots are already set".to_string())
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Builds a TLS listener's server config; relative paths resolve against `base`.
pub fn server_tls(config: &ServerTlsSettings, base: &Path) -> Result<ServerTls, Vec<TlsProblem>> {
    let provider = provider();
    let mut problems = Vec::new();
    let resolver = sni_resolver(config, base, &provider, &mut problems);
    let verifier = client_verifier(config, base, &provider).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    for (i, proto) in config.alpn.iter().enumerate() {
        if proto != "http/1.1" {
            problems.push(TlsProblem::new(
                format!("alpn[{i}]"),
                format!("unsupported protocol {proto:?}: only \"http/1.1\" is served so far"),
            ));
        }
    }
    let (Some(resolver), true) = (resolver, problems.is_empty()) else {
        return Err(problems);
    };
    let versions: &[&rustls::SupportedProtocolVersion] = if config.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| vec![TlsProblem::new("min_version", e.to_string())])?;
    let mtls = verifier.is_some();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    server.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| vec![TlsProblem::new("", format!("session tickets: {e}"))])?;
    Ok(ServerTls {
        config: Arc::new(server),
        handshake_timeout: config.handshake_timeout,
        mtls,
    })
}

/// Compiles an upstream's TLS client settings. `ca`: a PEM bundle (else the webpki roots).
pub fn client_tls(
    server_name: &str,
    ca: Option<&Path>,
    verify: bool,
    base: &Path,
) -> Result<ClientTls, TlsProblem> {
    let provider = provider();
    let server_name = ServerName::try_from(server_name.to_string()).map_err(|_| {
        TlsProblem::new(
            "tls_server_name",
            format!("{server_name:?} is not a valid DNS name or IP address"),
        )
    })?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem::new("tls", e.to_string()))?;
    let config = if verify {
        let roots = match ca {
            Some(ca) => root_store(&resolve_path(base, ca))
                .map_err(|m| TlsProblem::new("tls_ca_file", m))?,
            None => {
                let mut roots = webpki_roots::TLS_SERVER_ROOTS.to_vec();
                if let Some(extra) = EXTRA_ROOTS.get() {
                    roots.extend(extra.roots.iter().cloned());
                }
                RootCertStore { roots }
            }
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
    })
}

/// `tls_verify = false`: accepts any origin certificate (still checks handshake signatures).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::escape_rdn_value;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_rdn_value(value, &mut out);
        out
    }

    #[test]
    fn rdn_values_are_escaped_to_printable_ascii() {
        assert_eq!(escaped("alice"), "alice");
        assert_eq!(
            escaped("alice\r\nx-injected: evil"),
            "alice\\0D\\0Ax-injected: evil"
        );
        assert_eq!(escaped("mallory, O=admins"), "mallory\\, O=admins");
        assert_eq!(escaped("#x"), "\\#x");
        assert_eq!(escaped(" a "), "\\ a\\ ");
        assert_eq!(escaped("é"), "\\C3\\A9");
        assert!(
            escaped("\u{7f}\0")
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b))
        );
    }
}
