//! `weft certs`: a cluster certificate authority in a directory, and the
//! certificates it issues. `init DIR` writes `DIR/ca.pem` and `DIR/ca-key.pem`
//! (0600); `issue DIR --role R --name N` writes `DIR/N/{ca.pem,cert.pem,key.pem}`,
//! the directory every weft binary takes as `--tls-dir`.
//!
//! A certificate names its holder as the SAN URI `weft://ROLE/NAME`; server
//! roles (mds, chunkd, gateway) also get the DNS name clients verify
//! (`weft_proto::identity::SERVER_NAME`). Keys are ECDSA P-256.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use weft_proto::identity::{san_uri, valid_name, Role, SERVER_NAME};

/// A CA lives ten years; the certificates it issues `--days` (default 825).
const CA_DAYS: i64 = 3650;

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Creates the cluster CA in `dir` (made if missing); refuses to replace one.
pub fn init(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.pem").exists() || dir.join("ca-key.pem").exists() {
        bail!("{} already holds a CA (ca.pem / ca-key.pem)", dir.display());
    }
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "weft cluster CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_DAYS);
    let cert = p.self_signed(&key)?;
    write_file(
        &dir.join("ca-key.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
    ensure_cap_key(dir)?;
    Ok(())
}

/// The chunk capability key file beside a CA (`DIR/cap.key`): made with
/// one key if missing. Give it (a copy, 0600) to the MDS and every chunk
/// daemon as --cap-key.
pub fn ensure_cap_key(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join(CAP_KEY_FILE);
    if !path.exists() {
        let text = format!(
            "# weft chunk capability keys: \"ID HEX-KEY\" a line; the highest id signs,\n\
             # every listed key verifies (rotate: `weft certs cap-key FILE --rotate`).\n{}",
            weft_proto::caps::format_key(1, &random_key()?)
        );
        // Whole or not at all (readers never see a half-written file), and
        // another process making it at the same time is as good.
        let tmp = dir.join(format!(".{CAP_KEY_FILE}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        write_file(&tmp, text.as_bytes(), 0o600)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        if let Err(e) = linked {
            if !path.exists() {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    Ok(path)
}

/// The key file's name in a CA directory.
pub const CAP_KEY_FILE: &str = "cap.key";

fn random_key() -> Result<[u8; weft_proto::caps::KEY_LEN]> {
    use std::io::Read;
    let mut k = [0u8; weft_proto::caps::KEY_LEN];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .context("cannot read /dev/urandom")?;
    Ok(k)
}

/// Adds a key with an id above every other to the key file `path` (made
/// if missing): the MDS signs with it once it re-reads the file, and every
/// daemon accepts it. Returns the new key's id.
pub fn rotate_cap_key(path: &Path) -> Result<u32> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let newest = if old.trim().is_empty() {
        0
    } else {
        weft_proto::caps::KeyRing::parse(&old)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .newest()
            .unwrap_or(0)
    };
    let id = newest + 1;
    let mut text = old;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&weft_proto::caps::format_key(id, &random_key()?));
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, text.as_bytes(), 0o600)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(id)
}

/// Issues a certificate for `role`/`name` valid for `days` from now (a
/// negative count issues one already expired, for testing refusals) into
/// `dir/name/`. Refuses to overwrite an existing one.
pub fn issue(dir: &Path, role: Role, name: &str, days: i64) -> Result<()> {
    issue_into(dir, &dir.join(name), role, name, days)
}

/// Makes the CA in `dir` unless it has one, and issues `role`/`name` into
/// `out` unless it exists; returns `out`. For `weft up` and test clusters.
pub fn ensure(ca_dir: &Path, out: &Path, role: Role, name: &str) -> Result<std::path::PathBuf> {
    if !ca_dir.join("ca.pem").exists() {
        init(ca_dir)?;
    }
    if !out.join("cert.pem").exists() {
        issue_into(ca_dir, out, role, name, 825)?;
    }
    Ok(out.to_path_buf())
}

/// Like `issue`, into the directory `out`.
pub fn issue_into(dir: &Path, out: &Path, role: Role, name: &str, days: i64) -> Result<()> {
    valid_name(name).map_err(anyhow::Error::msg)?;
    let ca_pem = fs::read_to_string(dir.join("ca.pem")).with_context(|| {
        format!(
            "{}: no CA here (run `weft certs init` first)",
            dir.display()
        )
    })?;
    let ca_key_pem = fs::read_to_string(dir.join("ca-key.pem"))
        .with_context(|| format!("cannot read {}/ca-key.pem", dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca-key.pem")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("ca.pem")?;

    if out.exists() {
        bail!("{} already exists", out.display());
    }
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    p.subject_alt_names = vec![SanType::URI(san_uri(role, name).try_into()?)];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every role connects to others; server roles also accept connections.
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if role.serves() {
        p.subject_alt_names
            .push(SanType::DnsName(SERVER_NAME.try_into()?));
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::days(days);
    p.not_before = not_after.min(now) - Duration::days(1);
    p.not_after = not_after;
    let cert = p.signed_by(&key, &issuer)?;

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::create_dir(out).with_context(|| format!("cannot create {}", out.display()))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o700))?;
    write_file(&out.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&out.join("cert.pem"), cert.pem().as_bytes(), 0o644)?;
    write_file(&out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_names_role_and_name() {
        let d = tempfile_dir();
        init(&d).unwrap();
        assert!(init(&d).is_err(), "a second init must not replace the CA");
        issue(&d, Role::Chunkd, "c1", 30).unwrap();
        issue(&d, Role::Client, "laptop", 30).unwrap();
        assert!(issue(&d, Role::Client, "laptop", 30).is_err());
        assert!(issue(&d, Role::Client, "../x", 30).is_err());
        let t = weft_proto::identity::TlsDir::load(&d.join("c1")).unwrap();
        assert_eq!(t.me.role, Role::Chunkd);
        assert_eq!(t.me.name, "c1");
        let mode = fs::metadata(d.join("laptop/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("weft-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }
}
