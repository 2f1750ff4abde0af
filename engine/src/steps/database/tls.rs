//! TLS to a PostgreSQL source, with libpq's meaning of `sslmode`, for both of vmbuild's clients:
//! its own connections (tokio-postgres over rustls) and `pg_dump` (libpq, through `PGSSLMODE`
//! and `PGSSLROOTCERT`).
//!
//! | `sslmode`        | TLS                       | the server's certificate                     |
//! |------------------|---------------------------|----------------------------------------------|
//! | `disable`        | never                     | -                                            |
//! | `allow`/`prefer` | when the server offers it | not checked (libpq's default, too)           |
//! | `require`        | always                    | not checked, unless a root certificate is given: then as `verify-ca` |
//! | `verify-ca`      | always                    | signed by `sslrootcert`                      |
//! | `verify-full`    | always                    | signed by `sslrootcert` and naming the host  |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` for the system's store; for
//! the `verify-*` modes it defaults to `~/.postgresql/root.crt`, as in libpq. The source URL
//! itself is a secret: nothing here puts it into an error.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Option<TlsMode> {
        Some(match text {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    /// As libpq spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// A source URL taken apart: the connection settings tokio-postgres reads, and the TLS
/// settings vmbuild applies itself (tokio-postgres knows neither the `verify-*` modes nor
/// `sslrootcert`).
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub config: tokio_postgres::Config,
    pub mode: TlsMode,
    pub root_cert: Option<RootCert>,
}

/// Why a source URL's TLS settings cannot be used. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("not a valid PostgreSQL URL or connection string")]
    BadUrl,
    #[error("`sslmode={0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("`{0}` (a client certificate) is not supported: vmbuild logs in with a password")]
    ClientCertificate(&'static str),
    #[error("`sslmode={mode}` checks the server's certificate, and there is no root certificate: set `sslrootcert` to a PEM file (or `system`), or put one at `~/.postgresql/root.crt`")]
    NoRootCert { mode: &'static str },
    #[error("cannot read the root certificates `{path}`: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("the system's certificate store holds no usable certificate")]
    NoSystemRoots,
    #[error("TLS cannot be set up: {0}")]
    Setup(String),
}

/// Debian's bundle of the system's trusted certificates.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS parameters vmbuild takes out of a URL before tokio-postgres reads it.
const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// Parse `url` (a `postgres://` URL or a `key=value` connection string).
pub fn parse(url: &str) -> Result<SourceConfig, TlsError> {
    let (rest, tls) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_values(url)?
    };
    let mut mode = TlsMode::Prefer;
    let mut root_cert = None;
    for (key, value) in tls {
        match key.as_str() {
            "sslmode" => mode = TlsMode::parse(&value).ok_or(TlsError::BadMode(value))?,
            "sslrootcert" if value == "system" => root_cert = Some(RootCert::System),
            "sslrootcert" => root_cert = Some(RootCert::File(PathBuf::from(value))),
            "sslcert" => return Err(TlsError::ClientCertificate("sslcert")),
            "sslkey" => return Err(TlsError::ClientCertificate("sslkey")),
            _ => {}
        }
    }
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|_| TlsError::BadUrl)?;
    config.ssl_mode(match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    if root_cert.is_none() && matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) {
        let default = dirs::home_dir().map(|h| h.join(".postgresql/root.crt"));
        root_cert = default.filter(|p| p.is_file()).map(RootCert::File);
    }
    Ok(SourceConfig {
        config,
        mode,
        root_cert,
    })
}

/// A `postgres://` URL without its TLS query parameters, and those parameters (decoded).
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, tls)
}

/// A `key=value` connection string without its TLS settings, and those settings. Values may be
/// single-quoted, with `\'` and `\\` inside, as libpq reads them.
fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>), TlsError> {
    let mut chars = text.chars().peekable();
    let mut kept: Vec<String> = Vec::new();
    let mut tls = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(TlsError::BadUrl);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let mut raw = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().expect("a quote"));
            loop {
                match chars.next() {
                    Some('\\') => {
                        let escaped = chars.next().ok_or(TlsError::BadUrl)?;
                        raw.push('\\');
                        raw.push(escaped);
                        value.push(escaped);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => return Err(TlsError::BadUrl),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                raw.push(c);
                value.push(c);
                chars.next();
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), tls))
}

/// The rustls connector for `source`'s mode (unused when the mode is `disable`).
pub fn connector(source: &SourceConfig) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &source.root_cert {
        Some(root) => Some(Arc::new(load_roots(root)?)),
        None => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (source.mode, roots) {
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            return Err(TlsError::NoRootCert {
                mode: source.mode.as_str(),
            })
        }
        (TlsMode::VerifyFull, Some(roots)) => web_pki(roots, &provider)?,
        // libpq: `require` with a root certificate checks the chain, like verify-ca.
        (TlsMode::VerifyCa | TlsMode::Require, Some(roots)) => Arc::new(AnyName {
            inner: web_pki(roots, &provider)?,
        }),
        _ => Arc::new(Unchecked {
            provider: provider.clone(),
        }),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The libpq environment for `pg_dump`: the same mode and root certificate.
pub fn libpq_env(source: &SourceConfig) -> Vec<(&'static str, String)> {
    let mut env = vec![("PGSSLMODE", source.mode.as_str().to_string())];
    match &source.root_cert {
        Some(RootCert::File(path)) => env.push(("PGSSLROOTCERT", path.display().to_string())),
        // `system` is libpq 16's; the bundle file works with every version.
        Some(RootCert::System) if Path::new(SYSTEM_BUNDLE).is_file() => {
            env.push(("PGSSLROOTCERT", SYSTEM_BUNDLE.into()))
        }
        Some(RootCert::System) => env.push(("PGSSLROOTCERT", "system".into())),
        None => {}
    }
    env
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<_, _>>())
                .map_err(|e| root_error(path, e.to_string()))?;
            if certs.is_empty() {
                return Err(root_error(path, "no PEM certificate in it".into()));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| root_error(path, e.to_string()))?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

fn root_error(path: &Path, reason: String) -> TlsError {
    TlsError::RootCert {
        path: path.to_path_buf(),
        reason,
    }
}

fn web_pki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Setup(e.to_string()))
}

/// `prefer`/`require` without a root certificate: encrypted, the certificate not checked (as
/// libpq does); the handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in it is not checked.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        let source = parse(
            "postgres://u:p@db.example.org:5433/toxo?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(source.mode, TlsMode::VerifyFull);
        assert_eq!(source.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(source.config.get_dbname(), Some("toxo"));
        assert_eq!(source.config.get_application_name(), Some("x"));
        assert_eq!(source.config.get_ssl_mode(), SslMode::Require);
        let plain = parse("postgres://u@h/db").unwrap();
        assert_eq!(plain.mode, TlsMode::Prefer);
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn tls_parameters_are_taken_out_of_connection_strings() {
        let source = parse(
            "host=db.example.org dbname = toxo password='it\\'s x' sslmode=verify-ca sslrootcert='/a b.pem'",
        )
        .unwrap();
        assert_eq!(source.mode, TlsMode::VerifyCa);
        assert_eq!(source.root_cert, Some(RootCert::File("/a b.pem".into())));
        assert_eq!(source.config.get_password(), Some("it's x".as_bytes()));
        assert_eq!(source.config.get_dbname(), Some("toxo"));
    }

    #[test]
    fn bad_modes_and_client_certificates_are_refused_without_the_url() {
        let url = "postgres://u:hunter2-secret@h/db?sslmode=sometimes";
        let error = parse(url).unwrap_err().to_string();
        assert!(
            error.contains("sometimes") && !error.contains("hunter2"),
            "{error}"
        );
        let error = parse("postgres://u:pw@h/db?sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(error.contains("client certificate"), "{error}");
    }

    #[test]
    fn verification_without_a_root_certificate_is_refused() {
        let mut source = parse("postgres://u@h/db?sslmode=verify-full").unwrap();
        source.root_cert = None;
        let error = connector(&source).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("sslrootcert"), "{error}");
    }

    #[test]
    fn pg_dump_gets_the_same_settings() {
        let source = parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            libpq_env(&source),
            [
                ("PGSSLMODE", "verify-ca".to_string()),
                ("PGSSLROOTCERT", "/ca.pem".to_string())
            ]
        );
    }
}
