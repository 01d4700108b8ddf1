//! TLS termination on the proxy listener: rustls (ring provider, as for upstream TLS), ALPN `h2`
//! then `http/1.1`, and a certificate that can be replaced while the gateway runs (SIGHUP): new
//! handshakes use the new one, established connections keep theirs, and a replacement that does not
//! load leaves the old one in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why a certificate and key could not be used. `tollgate check` reports these under the TOML path
/// [`TlsError::toml_path`] names, so `check` and `run` give the same reasons.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The io error is in the message and deliberately not a `source`: `run` prints the whole
    // chain, which would say it twice.
    #[error("cannot read the {what} file {path}: {}", io_reason(.error))]
    Read {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("the {what} file {path} is not PEM: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("the certificate file {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    #[error("the key file {0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    #[error(
        "the key in {key} does not match the certificate in {cert} (it is another pair's key)"
    )]
    KeyMismatch { cert: String, key: String },
    #[error("the certificate in {path} cannot be used: {error}")]
    BadCertificate { path: String, error: rustls::Error },
    #[error("the key in {path} cannot be used with the certificate {cert}: {error}")]
    BadKey {
        path: String,
        cert: String,
        error: rustls::Error,
    },
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "it does not exist".to_owned(),
        _ => e.to_string(),
    }
}

impl TlsError {
    /// The `gateway.toml` key the problem is about: `proxy.tls.cert` or `proxy.tls.key`.
    pub fn toml_path(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. } | TlsError::Pem { what, .. } if *what == "certificate" => {
                "proxy.tls.cert"
            }
            TlsError::NoCertificate(_) | TlsError::BadCertificate { .. } => "proxy.tls.cert",
            TlsError::Read { .. }
            | TlsError::Pem { .. }
            | TlsError::NoKey(_)
            | TlsError::KeyMismatch { .. }
            | TlsError::BadKey { .. } => "proxy.tls.key",
        }
    }

    /// What to do about it, for `check`'s "problem; fix" lines.
    pub fn fix(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "check the path and that the gateway's user may read it",
            TlsError::Pem { .. } | TlsError::NoCertificate(_) | TlsError::BadCertificate { .. } => {
                "give a PEM certificate chain, leaf first"
            }
            TlsError::NoKey(_) | TlsError::BadKey { .. } => {
                "give the certificate's PEM private key (RSA, ECDSA or Ed25519)"
            }
            TlsError::KeyMismatch { .. } => {
                "give the key the certificate was issued for, or the certificate of this key"
            }
        }
    }
}

/// The certificate in force and where it is read from.
#[derive(Debug)]
pub struct TlsTerminator {
    config: ArcSwap<ServerConfig>,
    paths: parking_lot::Mutex<(PathBuf, PathBuf)>,
}

impl TlsTerminator {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<TlsTerminator, TlsError> {
        let config = server_config(cert, key)?;
        Ok(TlsTerminator {
            config: ArcSwap::from_pointee(config),
            paths: parking_lot::Mutex::new((cert.to_owned(), key.to_owned())),
        })
    }

    /// Reads the files again (possibly at new paths). On error the certificate in force stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let config = server_config(cert, key)?;
        self.config.store(Arc::new(config));
        *self.paths.lock() = (cert.to_owned(), key.to_owned());
        Ok(())
    }

    /// The paths the certificate in force came from.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        self.paths.lock().clone()
    }

    /// An acceptor for one new connection, with the certificate in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// A rustls server config for this certificate and key, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = certificate_chain(cert)?;
    let private = private_key(key)?;
    build(cert, key, chain, private)
}

/// Every reason [`server_config`] would refuse these files, none when it would take them: both
/// files are read even when the first fails, so `tollgate check` lists each problem. The same
/// steps as `server_config`, so `check` and `run` cannot disagree.
pub fn problems(cert: &Path, key: &Path) -> Vec<TlsError> {
    match (certificate_chain(cert), private_key(key)) {
        (Ok(chain), Ok(private)) => build(cert, key, chain, private).err().into_iter().collect(),
        (chain, private) => chain.err().into_iter().chain(private.err()).collect(),
    }
}

/// The PEM certificates in `cert`, leaf first; at least one.
fn certificate_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_pem = read("certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    Ok(chain)
}

/// The first PEM private key in `key`.
fn private_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key_pem = read("key", key)?;
    rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            what: "key",
            path: key.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey(key.display().to_string()))
}

fn build(
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    // ring, as for upstream TLS (forward.rs): no C toolchain step in the build.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let unusable = |error: rustls::Error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
            }
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::BadCertificate {
                path: cert.display().to_string(),
                error,
            }
        }
        error => TlsError::BadKey {
            path: key.display().to_string(),
            cert: cert.display().to_string(),
            error,
        },
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate.
        .with_single_cert(chain, private)
        .map_err(unusable)?;
    // h2 first: a client offering both gets HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Writes a fresh self-signed certificate and its key; returns their paths.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn offers_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_bad_replacement_keeps_the_running_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (cert_b, key_b) = write_pair(dir.path(), "b");
        let tls = TlsTerminator::load(&cert_a, &key_a).unwrap();
        let before = Arc::as_ptr(&tls.config.load_full());

        // b's certificate with a's key: rustls sees they do not belong together.
        let err = tls.reload(&cert_b, &key_a).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_eq!(err.toml_path(), "proxy.tls.key");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            tls.reload(&missing, &key_b).unwrap_err(),
            TlsError::Read { .. }
        ));
        std::fs::write(&missing, "not PEM at all").unwrap();
        assert!(matches!(
            tls.reload(&missing, &key_b).unwrap_err(),
            TlsError::NoCertificate(_)
        ));
        assert!(matches!(
            tls.reload(&cert_b, &cert_b).unwrap_err(),
            TlsError::NoKey(_)
        ));
        assert_eq!(Arc::as_ptr(&tls.config.load_full()), before);
        assert_eq!(tls.paths(), (cert_a, key_a));

        tls.reload(&cert_b, &key_b).unwrap();
        assert_ne!(Arc::as_ptr(&tls.config.load_full()), before);
        assert_eq!(tls.paths(), (cert_b, key_b));
    }

    /// `problems` names every file `server_config` refuses, by its TOML path, and none for a pair
    /// it takes.
    #[test]
    fn problems_lists_each_refused_file_under_its_toml_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        let paths = |c: &Path, k: &Path| -> Vec<&'static str> {
            let found = problems(c, k);
            assert_eq!(found.is_empty(), server_config(c, k).is_ok());
            found.iter().map(TlsError::toml_path).collect()
        };
        assert!(paths(&cert_a, &key_a).is_empty());

        let missing = dir.path().join("missing.pem");
        assert_eq!(
            paths(&missing, &missing),
            vec!["proxy.tls.cert", "proxy.tls.key"]
        );
        let err = &problems(&missing, &key_a)[0];
        assert!(
            err.to_string().ends_with("missing.pem: it does not exist"),
            "{err}"
        );

        let text = dir.path().join("gateway.toml");
        std::fs::write(&text, "[proxy]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert_eq!(paths(&text, &text), vec!["proxy.tls.cert", "proxy.tls.key"]);
        assert!(matches!(
            problems(&text, &key_a)[0],
            TlsError::NoCertificate(_)
        ));
        assert!(matches!(problems(&cert_a, &text)[0], TlsError::NoKey(_)));

        let mismatch = problems(&cert_a, &key_b);
        assert_eq!(mismatch.len(), 1);
        assert!(
            matches!(mismatch[0], TlsError::KeyMismatch { .. }),
            "{}",
            mismatch[0]
        );
        assert_eq!(mismatch[0].toml_path(), "proxy.tls.key");
    }
}
