//! The daemon's configuration: one struct, parsed from the command line with
//! clap, checked by `validate()` before anything is served. `validate` also
//! makes sure the data directory exists and is a writable directory, so a bad
//! `--data` fails fast with one line naming the path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

/// weft chunk daemon: stores checksummed chunk replicas and serves the Chunk service.
#[derive(Parser, Debug, Clone)]
#[command(name = "weft-chunkd", version, args_override_self = true)]
pub struct Config {
    /// Read settings from this TOML file (keys are the long flags, e.g.
    /// `scrub-interval = 3600`); flags given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Data directory (created if missing); holds LOCK, chunkd.id and chunks/.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// Metadata server address (host:port or http://host:port), or a
    /// comma-separated list of an MDS group's nodes (the leader is followed).
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub mds: String,

    /// Failure domain reported to the MDS.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub rack: String,

    /// Bytes this daemon may use (suffixes K, M, G, T accepted); default: the
    /// size of the file system holding DIR.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub capacity: Option<u64>,

    /// Seconds between scrub passes; 0 disables scrubbing.
    #[arg(long, value_name = "SECS", default_value_t = 86400)]
    pub scrub_interval: u64,

    /// Scrub read rate in MiB/s.
    #[arg(long, value_name = "MIB_PER_SEC", default_value_t = 50)]
    pub scrub_rate: u64,

    /// Once listening, write the bound address here (atomically).
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Write the HTTP address actually listened on to this file.
    #[arg(long, value_name = "PATH")]
    pub http_addr_file: Option<PathBuf>,

    /// Heartbeat period in ms, overriding the one the MDS sends.
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Address to give the MDS and peers instead of the bound one.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,

    /// Certificate directory (ca.pem, cert.pem, key.pem from `weft certs
    /// issue`): mutual TLS on every link. Without it the daemon is plaintext
    /// and listens only on loopback unless --insecure.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Chunk capability key file (as the MDS's --cap-key; `weft certs init`
    /// writes one): a client's read or write is served only with a valid
    /// capability from the MDS for that chunk. Re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub cap_key: Option<PathBuf>,

    /// Allow plaintext on a non-loopback address (anyone reaching it can do anything).
    #[arg(long)]
    pub insecure: bool,

    /// Log filter (tracing EnvFilter syntax), e.g. info or weft_chunkd=debug.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
}

/// Parses a byte count with an optional binary suffix (K, M, G, T; "iB"/"B" tolerated).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        Some('T') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("not a byte count: {s:?}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("byte count too large: {s:?}"))
}

impl Config {
    /// A configuration with defaults, for tests and embedding.
    pub fn new(listen: SocketAddr, data: impl Into<PathBuf>, mds: impl Into<String>) -> Config {
        Config {
            listen,
            data: data.into(),
            mds: mds.into(),
            rack: "default".into(),
            capacity: None,
            scrub_interval: 86400,
            scrub_rate: 50,
            addr_file: None,
            config: None,
            http: None,
            http_addr_file: None,
            heartbeat_ms: None,
            advertise: None,
            log_level: "info".into(),
            tls_dir: None,
            cap_key: None,
            insecure: false,
        }
    }

    /// Checks the arguments and prepares the data directory (creating it when
    /// missing). Errors name the offending value.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mds.trim().is_empty() {
            bail!("--mds must not be empty");
        }
        if let Err(e) = weft_proto::leader::parse_list(&self.mds) {
            bail!("--mds {e}");
        }
        if self.heartbeat_ms == Some(0) {
            bail!("--heartbeat-ms must be positive");
        }
        if self.capacity == Some(0) {
            bail!("--capacity must be positive");
        }
        if self.scrub_rate == 0 {
            bail!("--scrub-rate must be positive");
        }
        let d = &self.data;
        match std::fs::metadata(d) {
            Ok(md) if !md.is_dir() => bail!("data dir {}: not a directory", d.display()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("data dir {}: cannot create", d.display()))?;
            }
            Err(e) => bail!("data dir {}: {e}", d.display()),
        }
        // Prove we can create, write and remove files there (permissions, a
        // read-only mount, a full disk all show up now instead of mid-write).
        let probe = d.join(format!(".probe.{}", std::process::id()));
        std::fs::write(&probe, b"probe")
            .and_then(|_| std::fs::remove_file(&probe))
            .with_context(|| format!("data dir {}: not writable", d.display()))?;
        Ok(())
    }

    pub fn scrub_interval(&self) -> Option<Duration> {
        (self.scrub_interval > 0).then(|| Duration::from_secs(self.scrub_interval))
    }

    pub fn scrub_bytes_per_sec(&self) -> u64 {
        self.scrub_rate.saturating_mul(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Config::try_parse_from([
            "weft-chunkd",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/tmp/x",
            "--mds",
            "127.0.0.1:9000",
            "--capacity",
            "1G",
            "--scrub-interval",
            "0",
        ])
        .unwrap();
        assert_eq!(c.capacity, Some(1 << 30));
        assert_eq!(c.scrub_interval(), None);
        assert_eq!(c.rack, "default");
    }

    #[test]
    fn data_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let c = Config::new("127.0.0.1:0".parse().unwrap(), &file, "x:1");
        let msg = format!("{:#}", c.validate().unwrap_err());
        assert!(
            msg.contains(file.to_str().unwrap()) && msg.contains("not a directory"),
            "{msg}"
        );
        let fresh = dir.path().join("a/b");
        Config::new("127.0.0.1:0".parse().unwrap(), &fresh, "x:1")
            .validate()
            .unwrap();
        assert!(fresh.is_dir());
        let under_file = file.join("sub");
        let msg = format!(
            "{:#}",
            Config::new("127.0.0.1:0".parse().unwrap(), &under_file, "x:1")
                .validate()
                .unwrap_err()
        );
        assert!(msg.contains(under_file.to_str().unwrap()), "{msg}");
    }
}
