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

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} file {path} is not PEM: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("certificate file {0} holds no certificate")]
    NoCertificate(String),
    #[error("key file {0} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey(String),
    #[error("certificate {cert} and key {key} cannot be used together: {reason}")]
    Unusable {
        cert: String,
        key: String,
        reason: String,
    },
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
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A rustls server config for this certificate and key, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_pem = read("certificate", cert)?;
    let key_pem = read("key", key)?;
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
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            what: "key",
            path: key.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey(key.display().to_string()))?;
    // ring, as for upstream TLS (forward.rs): no C toolchain step in the build.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let unusable = |e: rustls::Error| TlsError::Unusable {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
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
        assert!(matches!(err, TlsError::Unusable { .. }), "{err}");
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
}
