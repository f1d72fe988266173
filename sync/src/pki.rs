//! The region's certificate authority and the identities it issues.
//!
//! A site's certificate names it in a DNS subject alternative name,
//! `<site id>.site.roost`; the region reads the site id from the verified
//! certificate ([`site_id_of`]) and never from anything the site says.
//! The region's own certificate is `<region>.region.roost`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

const SITE_SUFFIX: &str = ".site.roost";
const REGION_SUFFIX: &str = ".region.roost";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate request: {0}")]
    Request(String),
    #[error("certificate is not a Roost site certificate: {0}")]
    NotASite(String),
}

/// A certificate chain and its private key, with the CA that anchors it.
#[derive(Debug)]
pub struct Credential {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl Clone for Credential {
    fn clone(&self) -> Self {
        Credential {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

/// File names of a credential in a directory: PEM, as operators expect.
pub const CERT_FILE: &str = "identity.crt";
pub const KEY_FILE: &str = "identity.key";
pub const CA_FILE: &str = "ca.crt";
/// A certificate request sent and not yet answered with a written
/// credential (see [`Request::load_or_new`]).
pub const PENDING_KEY_FILE: &str = "pending.key";
pub const PENDING_CSR_FILE: &str = "pending.csr";

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Credential {
    /// Writes the credential as PEM files in `dir` (the key readable by its
    /// owner alone), each durably and atomically.
    pub fn write_pem(&self, dir: &std::path::Path) -> Result<(), PkiError> {
        let chain: String = self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        for (name, text, mode) in [
            (CERT_FILE, chain, 0o644),
            (
                KEY_FILE,
                pem("PRIVATE KEY", self.key.secret_pkcs8_der()),
                0o600,
            ),
            (CA_FILE, pem("CERTIFICATE", &self.ca), 0o644),
        ] {
            let path = dir.join(name);
            roost_common::files::write_atomic(&path, text.as_bytes(), mode).map_err(|e| {
                PkiError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// Reads a credential [`Self::write_pem`] wrote.
    pub fn read_pem(dir: &std::path::Path) -> Result<Credential, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let err = |name: &str, e: &dyn std::fmt::Display| PkiError::File {
            path: dir.join(name).display().to_string(),
            reason: e.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(dir.join(CERT_FILE))
            .map_err(|e| err(CERT_FILE, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(CERT_FILE, &e))?;
        if chain.is_empty() {
            return Err(err(CERT_FILE, &"holds no certificate"));
        }
        let key =
            PrivatePkcs8KeyDer::from_pem_file(dir.join(KEY_FILE)).map_err(|e| err(KEY_FILE, &e))?;
        let ca = CertificateDer::from_pem_file(dir.join(CA_FILE)).map_err(|e| err(CA_FILE, &e))?;
        Ok(Credential { chain, key, ca })
    }
}

/// The region's CA.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    pub fn new(region: &str) -> Result<Ca, PkiError> {
        Self::with_key(region, KeyPair::generate()?)
    }

    /// The CA of `region` with a key kept from before ([`Self::key_pem`]).
    /// Its certificate is made again from the same name and key, so every
    /// certificate it signed before still chains to it.
    pub fn from_key_pem(region: &str, key_pem: &str) -> Result<Ca, PkiError> {
        Self::with_key(region, KeyPair::from_pem(key_pem)?)
    }

    fn with_key(region: &str, key: KeyPair) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Roost region {region} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The CA's private key, PEM, for the controller's store.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a site certificate for the key in `csr` (PEM). Only the key is
    /// taken from the request: the names are the site id the join token
    /// was issued for, never what the request asks.
    pub fn sign_site_request(&self, site_id: &str, csr_pem: &str) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Request(e.to_string()))?;
        let mut params = CertificateParams::new(vec![format!("{site_id}{SITE_SUFFIX}")])?;
        params.distinguished_name.push(DnType::CommonName, site_id);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = params.signed_by(&csr.public_key, &self.cert, &self.key)?;
        Ok(cert.pem())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn issue(&self, cn: &str, dns: String) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Credential {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca: self.cert_der(),
        })
    }

    /// A site's identity (issued at enrollment, for a one-time join token).
    pub fn issue_site(&self, site_id: &str) -> Result<Credential, PkiError> {
        self.issue(site_id, format!("{site_id}{SITE_SUFFIX}"))
    }

    /// The region's own identity.
    pub fn issue_region(&self, region: &str) -> Result<Credential, PkiError> {
        self.issue(region, region_server_name(region))
    }
}

/// A site's key and the request to sign it, made before enrollment: the
/// private key never leaves the site.
pub struct Request {
    key: KeyPair,
    /// The certificate request, PEM, to send with the join token.
    pub csr_pem: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

impl Request {
    pub fn new(site_id: &str) -> Result<Request, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![format!("{site_id}{SITE_SUFFIX}")])?;
        params.distinguished_name.push(DnType::CommonName, site_id);
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Request { key, csr_pem })
    }

    /// The request kept in `dir` by an earlier attempt, or a new one kept
    /// there (durably, the key readable by its owner alone) before it is
    /// sent: an agent stopped after the region spent its join token but
    /// before it wrote the certificate asks again with the same request,
    /// and the region answers it again.
    pub fn load_or_new(site_id: &str, dir: &std::path::Path) -> Result<Request, PkiError> {
        let (key_path, csr_path) = (dir.join(PENDING_KEY_FILE), dir.join(PENDING_CSR_FILE));
        let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| PkiError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let (Ok(key_pem), Ok(csr_pem)) = (
            std::fs::read_to_string(&key_path),
            std::fs::read_to_string(&csr_path),
        ) {
            let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, &e))?;
            return Ok(Request { key, csr_pem });
        }
        let r = Request::new(site_id)?;
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, &e))?;
        roost_common::files::write_atomic(&key_path, r.key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| file_err(&key_path, &e))?;
        roost_common::files::write_atomic(&csr_path, r.csr_pem.as_bytes(), 0o644)
            .map_err(|e| file_err(&csr_path, &e))?;
        Ok(r)
    }

    /// Removes the request [`Self::load_or_new`] kept (once the credential
    /// is written).
    pub fn forget(dir: &std::path::Path) {
        let _ = std::fs::remove_file(dir.join(PENDING_KEY_FILE));
        let _ = std::fs::remove_file(dir.join(PENDING_CSR_FILE));
    }

    /// The credential, once the region answered with the signed
    /// certificate and its CA (both PEM).
    pub fn complete(self, cert_pem: &str, ca_pem: &str) -> Result<Credential, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str, e: &dyn std::fmt::Display| PkiError::Request(format!("{what}: {e}"));
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad("the region's certificate", &e))?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| bad("the region's CA", &e))?;
        Ok(Credential {
            chain: vec![cert],
            key: PrivatePkcs8KeyDer::from(self.key.serialize_der()),
            ca,
        })
    }
}

/// SHA-256 (hex) of a certificate request as sent: how the region knows an
/// enrollment asked again after a crash.
pub fn request_fingerprint(csr_pem: &str) -> String {
    fingerprint(csr_pem.trim().as_bytes())
}

/// A one-time join token: `rjt1.<site id>.<secret>`. The region keeps only
/// the secret's SHA-256.
pub mod join_token {
    use base64::Engine;
    use sha2::Digest;

    const PREFIX: &str = "rjt1";

    /// A new token for `site_id`, and the hash to keep.
    pub fn new(site_id: &str) -> (String, String) {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let token = format!("{PREFIX}.{site_id}.{secret}");
        let hash = hash(&token);
        (token, hash)
    }

    /// The hash a token is kept under.
    pub fn hash(token: &str) -> String {
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The site id a well-formed token names (not proof of anything until
    /// its hash is found unused).
    pub fn site_of(token: &str) -> Option<&str> {
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(site), Some(secret), None)
                if !site.is_empty() && secret.len() == 43 =>
            {
                Some(site)
            }
            _ => None,
        }
    }
}

/// The DNS name a site's certificate carries: what one controller node of
/// a site expects in its peer's certificate.
pub fn site_server_name(site_id: &str) -> String {
    format!("{site_id}{SITE_SUFFIX}")
}

/// The name a site expects in the region's certificate.
pub fn region_server_name(region: &str) -> String {
    format!("{region}{REGION_SUFFIX}")
}

/// A certificate's SHA-256 fingerprint (lowercase hex): what the region
/// pins per site at enrollment, so a site's older certificates (a stolen
/// disk's, a revoked enrollment's) stop working when it enrolls again.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`fingerprint`] of a PEM certificate (the first in `pem`).
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::NotASite(format!("not a PEM certificate: {e}")))?;
    Ok(fingerprint(&der))
}

impl Credential {
    /// This credential's own certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.chain
            .first()
            .map(|c| pem("CERTIFICATE", c))
            .unwrap_or_default()
    }

    /// The fingerprint of this credential's own certificate.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }
}

/// The site id a (verified) site certificate names.
pub fn site_id_of(cert: &[u8]) -> Result<String, PkiError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| PkiError::NotASite(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PkiError::NotASite(e.to_string()))?
        .ok_or_else(|| PkiError::NotASite("no subject alternative name".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => {
                d.strip_suffix(SITE_SUFFIX).map(String::from)
            }
            _ => None,
        })
        .ok_or_else(|| PkiError::NotASite(format!("no *{SITE_SUFFIX} name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_request_is_sent_again_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let first = Request::load_or_new("f-01", &pki).unwrap();
        let again = Request::load_or_new("f-01", &pki).unwrap();
        assert_eq!(first.csr_pem, again.csr_pem);
        assert_eq!(
            request_fingerprint(&first.csr_pem),
            request_fingerprint(&again.csr_pem)
        );
        // The kept key still completes a credential the region signs.
        let ca = Ca::new("eu").unwrap();
        let cert = ca.sign_site_request("f-01", &again.csr_pem).unwrap();
        let cred = again.complete(&cert, &ca.cert_pem()).unwrap();
        assert_eq!(cred.fingerprint(), pem_fingerprint(&cert).unwrap());
        let mode = std::fs::metadata(pki.join(PENDING_KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        Request::forget(&pki);
        let fresh = Request::load_or_new("f-01", &pki).unwrap();
        assert_ne!(fresh.csr_pem, first.csr_pem);
    }

    #[test]
    fn site_id_comes_from_the_certificate() {
        let ca = Ca::new("eu").unwrap();
        let site = ca.issue_site("edge-factory-01").unwrap();
        assert_eq!(site_id_of(&site.chain[0]).unwrap(), "edge-factory-01");
        let region = ca.issue_region("eu").unwrap();
        assert!(
            site_id_of(&region.chain[0]).is_err(),
            "a region certificate names no site"
        );
        assert!(site_id_of(b"garbage").is_err());
    }

    #[test]
    fn enrollment_signs_the_sites_key_under_the_tokens_site_id() {
        let ca = Ca::new("eu").unwrap();
        // The request asks for another name: the CA ignores it.
        let req = Request::new("someone-else").unwrap();
        let cert = ca.sign_site_request("vehicle-07", &req.csr_pem).unwrap();
        let cred = req.complete(&cert, &ca.cert_pem()).unwrap();
        assert_eq!(site_id_of(&cred.chain[0]).unwrap(), "vehicle-07");
        assert!(ca.sign_site_request("x", "garbage").is_err());
        // A CA made again from its kept key still anchors what it signed.
        let again = Ca::from_key_pem("eu", &ca.key_pem()).unwrap();
        let (_, old) = x509_parser::parse_x509_certificate(&cred.chain[0]).unwrap();
        let anchor_der = again.cert_der();
        let (_, anchor) = x509_parser::parse_x509_certificate(&anchor_der).unwrap();
        old.verify_signature(Some(anchor.public_key())).unwrap();
        assert_eq!(old.issuer(), anchor.subject());
    }

    #[test]
    fn join_tokens_name_their_site_and_hash_stably() {
        let (t, h) = join_token::new("edge-factory-01");
        assert_eq!(join_token::site_of(&t), Some("edge-factory-01"));
        assert_eq!(join_token::hash(&t), h);
        assert_ne!(join_token::new("edge-factory-01").1, h, "each token is new");
        for bad in [
            "",
            "rjt1.a",
            "rjt1..x",
            "rjt2.a.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "rjt1.a.short",
        ] {
            assert_eq!(join_token::site_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_round_trip_through_pem_files() {
        let ca = Ca::new("eu").unwrap();
        let site = ca.issue_site("vehicle-07").unwrap();
        let dir = tempfile::tempdir().unwrap();
        site.write_pem(dir.path()).unwrap();
        let back = Credential::read_pem(dir.path()).unwrap();
        assert_eq!(back.chain, site.chain);
        assert_eq!(back.ca, site.ca);
        assert_eq!(back.key.secret_pkcs8_der(), site.key.secret_pkcs8_der());
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let e = Credential::read_pem(dir.path()).unwrap_err().to_string();
        assert!(e.contains(KEY_FILE), "{e}");
    }
}
