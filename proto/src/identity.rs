//! Who a peer is: the role and name a weft certificate carries, and the
//! certificate files a daemon or client presents (`DIR/NAME/{ca,cert,key}.pem`
//! as written by `weft certs issue`).
//!
//! A weft certificate names its holder in a SAN URI `weft://ROLE/NAME`. Daemons
//! that serve (mds, chunkd, gateway) also carry the DNS name [`SERVER_NAME`],
//! which every weft client asks for when it verifies a server: so a client or
//! admin certificate can never pose as a server.

use std::path::{Path, PathBuf};

/// The DNS name in every server certificate and the one clients verify.
pub const SERVER_NAME: &str = "weft-server";

/// What a certificate's holder may do; checked by every service (see `gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Mds,
    Chunkd,
    Client,
    Gateway,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Mds,
        Role::Chunkd,
        Role::Client,
        Role::Gateway,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mds => "mds",
            Role::Chunkd => "chunkd",
            Role::Client => "client",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Roles whose certificates may serve (carry [`SERVER_NAME`]).
    pub fn serves(self) -> bool {
        matches!(self, Role::Mds | Role::Chunkd | Role::Gateway)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified peer: put into each request's extensions by the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub name: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

/// The SAN URI naming `role`/`name`.
pub fn san_uri(role: Role, name: &str) -> String {
    format!("weft://{role}/{name}")
}

/// Parses a `weft://ROLE/NAME` URI.
pub fn parse_uri(uri: &str) -> Option<Peer> {
    let rest = uri.strip_prefix("weft://")?;
    let (role, name) = rest.split_once('/')?;
    let role = Role::parse(role)?;
    valid_name(name).ok()?;
    Some(Peer {
        role,
        name: name.to_string(),
    })
}

/// A certificate name: also a directory name, so no path characters.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad certificate name '{name}': use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// The weft identity in a DER certificate (already verified by TLS).
pub fn peer_from_der(der: &[u8]) -> Result<Peer, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("certificate has no subjectAltName")?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => parse_uri(u),
            _ => None,
        })
        .ok_or_else(|| "certificate names no weft://ROLE/NAME".to_string())
}

/// A certificate directory's files, as PEM, and who they make us.
#[derive(Debug, Clone)]
pub struct TlsDir {
    pub dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub me: Peer,
}

impl TlsDir {
    pub fn load(dir: &Path) -> Result<TlsDir, String> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read(&p).map_err(|e| format!("--tls-dir: cannot read {}: {e}", p.display()))
        };
        let ca_pem = read("ca.pem")?;
        let cert_pem = read("cert.pem")?;
        let key_pem = read("key.pem")?;
        let der =
            first_pem_der(&cert_pem).map_err(|e| format!("{}/cert.pem: {e}", dir.display()))?;
        let me = peer_from_der(&der).map_err(|e| format!("{}/cert.pem: {e}", dir.display()))?;
        Ok(TlsDir {
            dir: dir.to_path_buf(),
            ca_pem,
            cert_pem,
            key_pem,
            me,
        })
    }
}

fn first_pem_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    Ok(p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        for r in Role::ALL {
            let p = parse_uri(&san_uri(r, "n-1.a_b")).unwrap();
            assert_eq!((p.role, p.name.as_str()), (r, "n-1.a_b"));
        }
        assert_eq!(parse_uri("weft://root/x"), None);
        assert_eq!(parse_uri("http://client/x"), None);
        assert_eq!(parse_uri("weft://client/../x"), None);
        assert_eq!(parse_uri("weft://client/"), None);
    }

    #[test]
    fn names_are_path_safe() {
        assert!(valid_name("c1").is_ok());
        assert!(valid_name("..").is_err());
        assert!(valid_name("a/b").is_err());
        assert!(valid_name("").is_err());
    }
}
