//! weft-s3's command line and credentials, checked in one place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use serde::Deserialize;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-s3",
    version,
    about = "S3 gateway over a weft cluster: buckets are top-level directories, objects are files"
)]
pub struct Args {
    /// The MDS's address, or a comma-separated list of a replicated MDS's.
    #[arg(long)]
    pub mds: String,
    /// Where to serve S3 (HTTP).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// A TOML file of access keys: [[keys]] access_key = "...", secret_key = "...".
    /// Without it, one pair from WEFT_S3_ACCESS_KEY and WEFT_S3_SECRET_KEY.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// The region requests must be signed for.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Also serve virtual-host-style requests (BUCKET.DOMAIN); path style
    /// always works. May be repeated.
    #[arg(long)]
    pub domain: Vec<String>,
    /// Certificate directory for mutual TLS to the cluster (`weft certs issue`).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Serve S3 over plain HTTP on a non-loopback address (put TLS in front).
    #[arg(long)]
    pub insecure: bool,
    /// Write the bound address here once listening (for --listen with port 0).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// How long one operation keeps retrying an unreachable MDS.
    #[arg(long, default_value_t = 60)]
    pub mds_timeout_secs: u64,
    /// MiB of one object's (or part's) body held in memory while it is
    /// stored on the chunk daemons: a PUT waits for storage past it.
    #[arg(long, default_value_t = 8)]
    pub write_buffer_mib: u64,
    /// MiB of memory for cached file data, shared by all GETs.
    #[arg(long, default_value_t = 16)]
    pub data_cache_mib: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredFile {
    keys: Vec<KeyPair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPair {
    access_key: String,
    secret_key: String,
}

/// The access keys the gateway accepts. An unknown key is S3's
/// InvalidAccessKeyId; a wrong secret fails the signature check
/// (SignatureDoesNotMatch).
#[derive(Debug, Default)]
pub struct Keys(HashMap<String, SecretKey>);

impl Keys {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse_toml(text: &str, file: &Path) -> Result<Keys, String> {
        let f: CredFile = toml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut keys = Keys::default();
        for k in f.keys {
            if k.access_key.is_empty() || k.secret_key.is_empty() {
                return Err(format!("{}: an empty access or secret key", file.display()));
            }
            if keys.0.contains_key(&k.access_key) {
                return Err(format!(
                    "{}: access key {} given twice",
                    file.display(),
                    k.access_key
                ));
            }
            keys.0.insert(k.access_key, SecretKey::from(k.secret_key));
        }
        Ok(keys)
    }

    /// From `--credentials` or the environment; an error if neither.
    pub fn load(file: Option<&Path>) -> Result<Keys, String> {
        let keys = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                Keys::parse_toml(&text, f)?
            }
            None => {
                let a = std::env::var("WEFT_S3_ACCESS_KEY").unwrap_or_default();
                let s = std::env::var("WEFT_S3_SECRET_KEY").unwrap_or_default();
                if a.is_empty() || s.is_empty() {
                    return Err("no credentials: give --credentials FILE or set WEFT_S3_ACCESS_KEY and WEFT_S3_SECRET_KEY".into());
                }
                Keys(HashMap::from([(a, SecretKey::from(s))]))
            }
        };
        if keys.is_empty() {
            return Err("the credentials file lists no keys".into());
        }
        Ok(keys)
    }
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.get(access_key).cloned().ok_or_else(|| {
            s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file() {
        let p = Path::new("creds.toml");
        let k = Keys::parse_toml(
            "[[keys]]\naccess_key = \"a\"\nsecret_key = \"s\"\n[[keys]]\naccess_key = \"b\"\nsecret_key = \"t\"\n",
            p,
        )
        .unwrap();
        assert_eq!(k.len(), 2);
        let dup = "[[keys]]\naccess_key = \"a\"\nsecret_key = \"s\"\n[[keys]]\naccess_key = \"a\"\nsecret_key = \"t\"\n";
        assert!(Keys::parse_toml(dup, p).unwrap_err().contains("twice"));
        assert!(Keys::parse_toml("[[keys]]\naccess_key = \"a\"\n", p).is_err());
    }
}
