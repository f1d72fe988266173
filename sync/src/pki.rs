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
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Roost region {region} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
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

/// The name a site expects in the region's certificate.
pub fn region_server_name(region: &str) -> String {
    format!("{region}{REGION_SUFFIX}")
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
