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
}
