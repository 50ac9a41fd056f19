//! Command line and `-o` mount options of `weftfs`.
//!
//! Owns the argv contract `weftfs MDS_ADDR MOUNTPOINT [-o OPTIONS] [-f]`, which is
//! the form mount.fuse3 uses (`weftfs SOURCE MOUNTPOINT -o rw,opts,dev,suid`), so
//! mount(8) and /etc/fstab work. Parsing is pure: it never touches the file
//! system or the network; main.rs validates the mount point and the MDS.
//!
//! Invariants: every option is either honoured, deliberately ignored (the generic
//! mount(8) options listed in [`IGNORED`]), or rejected with an error naming it
//! (exit code 2). Later occurrences of an option override earlier ones.

use std::path::PathBuf;
use std::time::Duration;

/// Generic mount(8)/fstab options that mean nothing to a FUSE file system (or
/// that the kernel already applied) and are accepted silently.
pub const IGNORED: &[&str] = &[
    "norelatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "exec",
    "noexec",
    "defaults",
    "nofail",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "async",
    "sync",
    "dirsync",
    "loud",
    "silent",
    "mand",
    "nomand",
    "noiversion",
    "iversion",
];

/// Everything `weftfs` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Cli {
    /// The source exactly as given, less an fstab-style `weftfs#` prefix. It is
    /// the mount's source (fsname) unless `fsname=` says otherwise.
    pub source: String,
    /// host:port to dial (source without an `http://` prefix or trailing `/`).
    pub mds_addr: String,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub opts: MountOpts,
}

/// The data cache's default size, MiB.
pub const DEFAULT_DATA_CACHE_MIB: u64 = weft_client::client::DEFAULT_DATA_CACHE_MIB;

/// The `-o` options weftfs honours.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOpts {
    pub ro: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub noatime: bool,
    /// Change an existing mount's flags (mount -o remount,ro|rw) and exit.
    pub remount: bool,
    /// When reads update atime: relatime (default), strictatime or noatime.
    pub atime: weft_client::atime::AtimeMode,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// Mount as plain `fuse` instead of `fuse.<subtype>`.
    pub nosubtype: bool,
    /// How long one operation keeps retrying an unreachable MDS before EIO.
    pub mds_timeout: Duration,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// Kernel TTL of names and attributes while the MDS's pushes are live
    /// (cache/kernel.rs); 0 keeps the short ones always.
    pub cache_timeout: Duration,
    pub log: Option<PathBuf>,
    pub log_level: Option<String>,
    /// Serve Prometheus metrics at /metrics over HTTP here (`http=ADDR`).
    pub http: Option<std::net::SocketAddr>,
    /// Write the bound HTTP address to this file (`http_addr_file=PATH`).
    pub http_addr_file: Option<PathBuf>,
    /// Certificate directory for mutual TLS (`weft certs issue`).
    pub tls_dir: Option<PathBuf>,
    /// The kernel's readahead window for this mount, KiB (tuning.rs).
    pub readahead_kb: u32,
    /// MiB of weftfs memory for cached file data (cache/data.rs); 0: none.
    pub data_cache_mib: u64,
    /// A directory for the data cache's local-disk tier (cache/disk.rs).
    pub disk_cache: Option<PathBuf>,
    /// MiB the disk tier may fill.
    pub disk_cache_mib: u64,
    /// KiB up to which a file written whole is packed into a segment
    /// (`pack_max_kib=`, `--pack-max-kib`); 0: never.
    pub pack_max_kib: u64,
    /// Strict coherence: another mount's change returns only after this
    /// mount's caches and the kernel's dropped it (cache/coherence.rs).
    pub strict: bool,
    /// close waits for the MDS's disk (ClientOpts::close_sync).
    pub close_sync: bool,
    /// Honour device nodes / setuid bits (mount.fuse3 passes `dev,suid` when
    /// root mounts); without them the mount is nodev,nosuid.
    pub dev: bool,
    pub suid: bool,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            ro: false,
            allow_other: false,
            allow_root: false,
            noatime: false,
            atime: weft_client::atime::AtimeMode::Relatime,
            remount: false,
            fsname: None,
            subtype: None,
            nosubtype: false,
            mds_timeout: Duration::from_secs(60),
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            cache_timeout: Duration::from_secs(60),
            readahead_kb: 8192,
            data_cache_mib: DEFAULT_DATA_CACHE_MIB,
            pack_max_kib: weft_client::client::DEFAULT_PACK_MAX >> 10,
            disk_cache: None,
            disk_cache_mib: 1024,
            strict: false,
            close_sync: false,
            log: None,
            log_level: None,
            http: None,
            http_addr_file: None,
            tls_dir: None,
            dev: false,
            suid: false,
        }
    }
}

impl MountOpts {
    /// The options the client library (weft-client) is tuned with.
    pub fn client_opts(&self) -> weft_client::ClientOpts {
        weft_client::ClientOpts {
            mds_timeout: self.mds_timeout,
            attr_timeout: self.attr_timeout,
            entry_timeout: self.entry_timeout,
            cache_timeout: self.cache_timeout,
            atime: self.atime,
            data_cache_mib: self.data_cache_mib,
            disk_cache: self.disk_cache.clone(),
            disk_cache_mib: self.disk_cache_mib,
            strict: self.strict,
            file_dirty_limit: None,
            pack_max: self.pack_max_kib << 10,
            close_sync: self.close_sync,
        }
    }

    /// The subtype the kernel should show (`fuse.<subtype>`), or None for plain `fuse`.
    pub fn effective_subtype(&self) -> Option<&str> {
        if self.nosubtype {
            None
        } else {
            Some(self.subtype.as_deref().unwrap_or("weftfs"))
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Run(Box<Cli>),
    Help,
    Version,
}

/// A command line weftfs refuses; main prints it and exits with code 2.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgError {
    #[error("unknown mount option '{0}'")]
    UnknownOption(String),
    #[error("unknown flag '{0}'")]
    UnknownFlag(String),
    #[error("bad value for option '{option}': {why}")]
    BadValue { option: String, why: String },
    #[error("{0}")]
    Usage(String),
}

pub const USAGE: &str = "usage: weftfs MDS_ADDR MOUNTPOINT [-o OPTION[,OPTION...]]... [-f]";

pub const HELP: &str = "\
weftfs: mount a weft file system

usage: weftfs MDS_ADDR MOUNTPOINT [-o OPTION[,OPTION...]]... [-f]
       mount -t fuse.weftfs MDS_ADDR MOUNTPOINT [-o OPTIONS]

MDS_ADDR is the metadata server's host:port (a 'weftfs#' or 'http://' prefix is
accepted), or a comma-separated list of the nodes of an MDS group
(HOST:PORT,HOST:PORT,...): the mount follows the group's leader. Without -f, weftfs returns once the mount is live and keeps serving it
in the background; `umount MOUNTPOINT`, SIGTERM or SIGINT end it.

flags:
  -f, --foreground     stay in the foreground, log to stderr unless log= is given
  -d, --debug          like -f with log_level=debug
  -o OPTIONS           comma-separated mount options (may repeat)
  -h, --help           this text
  -V, --version        print the version

options honoured:
  ro                   read-only mount
  remount              with ro or rw: change the existing mount at MOUNTPOINT
                       (mount -o remount,ro) instead of mounting
  allow_other          let users other than the mounter use the mount
  allow_root           let root (and the mounter) use the mount
  default_permissions  kernel permission checks (always on)
  relatime             update access times on read when they are older than
                       the last change, or a day old (the default)
  strictatime          update access times on every read
  noatime              do not update access times
  dev, suid            honour device files and setuid/setgid bits (mount.fuse3
                       adds both when root mounts); default nodev,nosuid
  fsname=NAME          mount source shown in /proc/mounts (default: MDS_ADDR)
  subtype=NAME         file system type fuse.NAME (default: weftfs)
  nosubtype            file system type plain 'fuse'
  mds_timeout=SECS     how long an operation waits for an unreachable MDS
                       before failing with EIO (default 60)
  attr_timeout=SECS    how long the kernel caches attributes (default 1)
  entry_timeout=SECS   how long the kernel caches names (default 1)
  cache_timeout=SECS   how long the kernel caches names and attributes while
                       the MDS's change pushes are live (default 60; 0: use
                       attr_timeout/entry_timeout always)
  strict               strict coherence: another mount's rename, unlink, chmod
                       or create returns only once this mount (and its kernel)
                       dropped what it changed, or after at most 1 s if this
                       mount stops answering; kernel TTLs are then at most 1 s
  close_sync           close also waits until the MDS has the file's creation,
                       size and attributes on disk (default: close returns
                       once the MDS holds them; fsync makes them durable)
  readahead=KIB        kernel readahead window for sequential reads (default 8192)
  data_cache=MIB       weftfs memory for cached file data (default 128; 0 turns
                       it off); dropped per file when another mount changes it
  disk_cache=DIR       also keep cached blocks in files under DIR (emptied of
                       them at mount; one mount per DIR; needs data_cache > 0)
  disk_cache_size=MIB  how much of DIR the disk cache may fill (default 1024)
  pack_max_kib=KIB     a file of at most KIB written whole between open and
                       close is stored packed with others in one segment
                       instead of in a chunk of its own (default 64; 0 turns
                       it off); also --pack-max-kib KIB
  log=PATH             append logs to PATH
  --config FILE        read options from a TOML file (data_cache = 256,
                       strict = true, ...); -o options given here win
  http=ADDR            serve Prometheus metrics at http://ADDR/metrics
  http_addr_file=PATH  write the address http= bound to PATH (for port 0)
  log_level=LEVEL      error, warn, info (default), debug, trace, or a
                       tracing filter such as weftfs=debug
  tls_dir=DIR          mutual TLS with the certificate in DIR (ca.pem,
                       cert.pem, key.pem from `weft certs issue --role client`)

options ignored (generic mount options): norelatime nostrictatime
  lazytime diratime nodiratime exec noexec defaults
  nofail _netdev auto noauto user nouser users owner group async sync dirsync,
  the FUSE kernel options user_id= group_id= rootmode= max_read= blksize=
  (weftfs sets them), and comment= / x-* annotations. Any other option is an error (exit code 2).
";

/// Parses argv (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Parsed, ArgError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut positional: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut opts = MountOpts::default();
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    // A config file's options come first, so -o options given here win.
    let (args, config) = take_config(args)?;
    if let Some(file) = config {
        apply_config_file(&mut opts, &file)?;
    }
    let mut it = args.into_iter();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            positional.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => only_positional = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-f" | "--foreground" => foreground = true,
            "-d" | "--debug" => {
                foreground = true;
                opts.log_level.get_or_insert_with(|| "debug".to_string());
            }
            // libfuse's single-threaded flag: accepted for compatibility.
            "-s" => {}
            "-o" => {
                let list = it
                    .next()
                    .ok_or_else(|| ArgError::Usage("-o needs an argument".into()))?;
                apply_option_list(&mut opts, &list)?;
            }
            a if a.starts_with("-o") => apply_option_list(&mut opts, &a[2..])?,
            "--pack-max-kib" => {
                let v = it
                    .next()
                    .ok_or_else(|| ArgError::Usage("--pack-max-kib needs a number".into()))?;
                apply_option_list(&mut opts, &format!("pack_max_kib={v}"))?;
            }
            a if a.starts_with("--pack-max-kib=") => {
                apply_option_list(&mut opts, &format!("pack_max_kib={}", &a[15..]))?
            }
            a => return Err(ArgError::UnknownFlag(a.to_string())),
        }
    }
    if positional.len() < 2 {
        return Err(ArgError::Usage(format!(
            "missing {}\n{USAGE}",
            if positional.is_empty() {
                "MDS_ADDR and MOUNTPOINT"
            } else {
                "MOUNTPOINT"
            }
        )));
    }
    if positional.len() > 2 {
        return Err(ArgError::Usage(format!(
            "unexpected argument '{}'\n{USAGE}",
            positional[2]
        )));
    }
    let mountpoint = PathBuf::from(positional.pop().unwrap());
    let raw = positional.pop().unwrap();
    let source = raw.strip_prefix("weftfs#").unwrap_or(&raw).to_string();
    let mds_addr = parse_mds_addr(&source)?;
    Ok(Parsed::Run(Box::new(Cli {
        source,
        mds_addr,
        mountpoint,
        foreground,
        opts,
    })))
}

/// `[http://]host:port[/]` → `host:port`, checking that the port is a
/// number; a comma-separated list of those → the same list of `host:port`.
pub fn parse_mds_addr(source: &str) -> Result<String, ArgError> {
    if source.contains(',') {
        let addrs = weft_proto::leader::parse_list(source)
            .map_err(|e| ArgError::Usage(format!("bad MDS_ADDR: {e}")))?;
        let parsed: Result<Vec<String>, ArgError> =
            addrs.iter().map(|a| parse_one_mds_addr(a)).collect();
        return Ok(parsed?.join(","));
    }
    parse_one_mds_addr(source)
}

fn parse_one_mds_addr(source: &str) -> Result<String, ArgError> {
    let bad = |why: &str| ArgError::Usage(format!("bad MDS_ADDR '{source}': {why}"));
    let s = source.strip_prefix("http://").unwrap_or(source);
    let s = s.strip_suffix('/').unwrap_or(s);
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.contains('/') || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']')))
    {
        return Err(bad("expected host:port"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("port is not a number from 0 to 65535"))?;
    Ok(s.to_string())
}

/// Applies one comma-separated `-o` list.
/// `args` without `--config FILE` / `--config=FILE`, and the file.
fn take_config(args: Vec<String>) -> Result<(Vec<String>, Option<PathBuf>), ArgError> {
    let mut rest = Vec::with_capacity(args.len());
    let mut file = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        if a == "--config" {
            let f = it
                .next()
                .ok_or_else(|| ArgError::Usage("--config needs a file".into()))?;
            file = Some(PathBuf::from(f));
        } else if let Some(f) = a.strip_prefix("--config=") {
            file = Some(PathBuf::from(f));
        } else {
            rest.push(a);
        }
    }
    Ok((rest, file))
}

/// A TOML file of mount options (`data_cache = 256`, `strict = true`).
fn apply_config_file(opts: &mut MountOpts, file: &std::path::Path) -> Result<(), ArgError> {
    let name = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| ArgError::Usage(format!("--config {name}: {e}")))?;
    apply_config(opts, &text, &name.to_string())
}

/// Applies a config file's text; errors name the key and the file.
pub fn apply_config(opts: &mut MountOpts, text: &str, file: &str) -> Result<(), ArgError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ArgError::Usage(format!("{file}: not valid TOML: {}", e.message()))
    })?;
    for (key, value) in &table {
        let item = match value {
            toml::Value::Boolean(true) => key.clone(),
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => format!("{key}={s}"),
            toml::Value::Integer(i) => format!("{key}={i}"),
            toml::Value::Float(f) => format!("{key}={f}"),
            v => {
                return Err(ArgError::Usage(format!(
                    "{file}: key '{key}': {v} is not a string, number or boolean"
                )))
            }
        };
        apply_option(opts, &item).map_err(|e| match e {
            ArgError::UnknownOption(k) => ArgError::Usage(format!("{file}: unknown key '{k}'")),
            e => ArgError::Usage(format!("{file}: key '{key}': {e}")),
        })?;
    }
    Ok(())
}

pub fn apply_option_list(opts: &mut MountOpts, list: &str) -> Result<(), ArgError> {
    for item in list.split(',').filter(|s| !s.is_empty()) {
        apply_option(opts, item)?;
    }
    Ok(())
}

fn apply_option(opts: &mut MountOpts, item: &str) -> Result<(), ArgError> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let need = |v: Option<&str>| -> Result<String, ArgError> {
        match v {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(ArgError::BadValue {
                option: key.to_string(),
                why: "needs a value".into(),
            }),
        }
    };
    let flag = |v: Option<&str>| -> Result<(), ArgError> {
        match v {
            None => Ok(()),
            Some(_) => Err(ArgError::BadValue {
                option: key.to_string(),
                why: "takes no value".into(),
            }),
        }
    };
    match key {
        "ro" => {
            flag(value)?;
            opts.ro = true
        }
        "allow_other" => {
            flag(value)?;
            opts.allow_other = true
        }
        "allow_root" => {
            flag(value)?;
            opts.allow_root = true
        }
        // Always on: the kernel enforces mode bits (and the MDS checks again).
        "default_permissions" => flag(value)?,
        "noatime" => {
            flag(value)?;
            opts.noatime = true;
            opts.atime = weft_client::atime::AtimeMode::Never;
        }
        "relatime" | "atime" => {
            flag(value)?;
            opts.noatime = false;
            opts.atime = weft_client::atime::AtimeMode::Relatime;
        }
        // The FUSE kernel options weftfs sets itself; mount(8) passes them
        // back from /proc/self/mountinfo on a remount.
        "user_id" | "group_id" | "rootmode" | "max_read" | "blksize" => {
            need(value)?;
        }
        "remount" => {
            flag(value)?;
            opts.remount = true;
        }
        "rw" => {
            flag(value)?;
            opts.ro = false;
        }
        "dev" | "nodev" => {
            flag(value)?;
            opts.dev = key == "dev";
        }
        "suid" | "nosuid" => {
            flag(value)?;
            opts.suid = key == "suid";
        }
        "strictatime" => {
            flag(value)?;
            opts.noatime = false;
            opts.atime = weft_client::atime::AtimeMode::Strict;
        }
        "nosubtype" => {
            flag(value)?;
            opts.nosubtype = true
        }
        "strict" => {
            flag(value)?;
            opts.strict = true
        }
        "close_sync" => {
            flag(value)?;
            opts.close_sync = true
        }
        "fsname" => opts.fsname = Some(need(value)?),
        "subtype" => opts.subtype = Some(need(value)?),
        "mds_timeout" => opts.mds_timeout = seconds(key, &need(value)?)?,
        "attr_timeout" => opts.attr_timeout = seconds(key, &need(value)?)?,
        "entry_timeout" => opts.entry_timeout = seconds(key, &need(value)?)?,
        "cache_timeout" => opts.cache_timeout = seconds(key, &need(value)?)?,
        "readahead" => {
            let v = need(value)?;
            opts.readahead_kb = v.parse().map_err(|_| ArgError::BadValue {
                option: key.to_string(),
                why: format!("'{v}' is not a number of KiB"),
            })?
        }
        "data_cache" => {
            let v = need(value)?;
            opts.data_cache_mib = v.parse().map_err(|_| ArgError::BadValue {
                option: key.to_string(),
                why: format!("'{v}' is not a number of MiB"),
            })?
        }
        "disk_cache" => opts.disk_cache = Some(PathBuf::from(need(value)?)),
        "pack_max_kib" => {
            let v = need(value)?;
            opts.pack_max_kib = v.parse().map_err(|_| ArgError::BadValue {
                option: key.to_string(),
                why: format!("'{v}' is not a number of KiB"),
            })?
        }
        "disk_cache_size" => {
            let v = need(value)?;
            opts.disk_cache_mib = v.parse().map_err(|_| ArgError::BadValue {
                option: key.to_string(),
                why: format!("'{v}' is not a number of MiB"),
            })?
        }
        "log" => opts.log = Some(PathBuf::from(need(value)?)),
        "log_level" => opts.log_level = Some(need(value)?),
        "http" => {
            let v = need(value)?;
            opts.http = Some(v.parse().map_err(|_| ArgError::BadValue {
                option: key.to_string(),
                why: format!("'{v}' is not an address such as 127.0.0.1:9810"),
            })?)
        }
        "http_addr_file" => opts.http_addr_file = Some(PathBuf::from(need(value)?)),
        "tls_dir" => opts.tls_dir = Some(PathBuf::from(need(value)?)),
        // fstab annotations for other tools (systemd, mount(8) comments).
        k if k == "comment" || k.starts_with("x-") => {}
        k if value.is_none() && IGNORED.contains(&k) => {}
        _ => return Err(ArgError::UnknownOption(key.to_string())),
    }
    Ok(())
}

/// Non-negative seconds, fractions allowed ("0.5").
fn seconds(option: &str, v: &str) -> Result<Duration, ArgError> {
    let bad = |why: &str| ArgError::BadValue {
        option: option.to_string(),
        why: format!("'{v}' {why}"),
    };
    let secs: f64 = v.parse().map_err(|_| bad("is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad("must be a non-negative number of seconds"));
    }
    if secs > 1e9 {
        return Err(bad("is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Cli {
        match parse_args(args.iter().copied()) {
            Ok(Parsed::Run(c)) => *c,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn plain_form() {
        let c = run(&["127.0.0.1:7000", "/mnt/w"]);
        assert_eq!(c.source, "127.0.0.1:7000");
        assert_eq!(c.mds_addr, "127.0.0.1:7000");
        assert_eq!(c.mountpoint, PathBuf::from("/mnt/w"));
        assert!(!c.foreground);
        assert_eq!(c.opts, MountOpts::default());
        assert_eq!(c.opts.effective_subtype(), Some("weftfs"));
    }

    #[test]
    fn mount_fuse3_form_ignores_generic_options() {
        let c = run(&[
            "weftfs#127.0.0.1:7000",
            "/mnt/w",
            "-o",
            "rw,relatime,dev,suid,nodev,nosuid,exec,noexec,defaults,nofail,_netdev,auto,noauto,user,nouser,users,async,sync,atime,diratime,nodiratime,x-systemd.automount,comment=foo",
        ]);
        assert_eq!(c.source, "127.0.0.1:7000");
        assert_eq!(c.opts, MountOpts::default());
    }

    #[test]
    fn honoured_options() {
        let c = run(&[
            "http://localhost:9/",
            "mnt",
            "-o",
            "ro,allow_other",
            "-odefault_permissions,noatime,fsname=weft-a,subtype=wf",
            "-f",
            "-o",
            "mds_timeout=2.5,attr_timeout=0,entry_timeout=3,cache_timeout=30,log=/tmp/w.log,log_level=debug",
        ]);
        assert_eq!(c.source, "http://localhost:9/");
        assert_eq!(c.mds_addr, "localhost:9");
        assert!(c.foreground);
        let o = &c.opts;
        assert!(o.ro && o.allow_other && o.noatime && !o.allow_root);
        assert_eq!(o.fsname.as_deref(), Some("weft-a"));
        assert_eq!(o.effective_subtype(), Some("wf"));
        assert_eq!(o.mds_timeout, Duration::from_millis(2500));
        assert_eq!(o.attr_timeout, Duration::ZERO);
        assert_eq!(o.entry_timeout, Duration::from_secs(3));
        assert_eq!(o.cache_timeout, Duration::from_secs(30));
        assert_eq!(o.log, Some(PathBuf::from("/tmp/w.log")));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn nosubtype_gives_plain_fuse() {
        let c = run(&["h:1", "m", "-o", "nosubtype"]);
        assert_eq!(c.opts.effective_subtype(), None);
    }

    #[test]
    fn unknown_option_is_named() {
        let e = parse_args(["h:1", "m", "-o", "rw,bogus_opt=3,ro"]).unwrap_err();
        assert_eq!(e, ArgError::UnknownOption("bogus_opt".into()));
        assert!(e.to_string().contains("bogus_opt"));
        let e = parse_args(["h:1", "m", "-o", "frobnicate"]).unwrap_err();
        assert_eq!(e, ArgError::UnknownOption("frobnicate".into()));
        // A generic flag given a value is not the generic flag.
        let e = parse_args(["h:1", "m", "-o", "exec=1"]).unwrap_err();
        assert_eq!(e, ArgError::UnknownOption("exec".into()));
        let e = parse_args(["h:1", "m", "-o", "dev=1"]).unwrap_err();
        assert!(e.to_string().contains("'dev'"), "{e}");
        // rw is honoured (it undoes an earlier ro) and takes no value.
        let e = parse_args(["h:1", "m", "-o", "rw=1"]).unwrap_err();
        assert!(e.to_string().contains("'rw'"), "{e}");
        assert!(!run(&["h:1", "m", "-o", "ro,rw"]).opts.ro);
        // remount, and the FUSE kernel options mount(8) passes back with it.
        let c = run(&[
            "h:1",
            "m",
            "-o",
            "remount,ro,user_id=0,group_id=0,rootmode=40000",
        ]);
        assert!(c.opts.remount && c.opts.ro);
    }

    #[test]
    fn mds_timeout_parsing() {
        let c = run(&["h:1", "m", "-o", "mds_timeout=7"]);
        assert_eq!(c.opts.mds_timeout, Duration::from_secs(7));
        let c = run(&["h:1", "m", "-o", "mds_timeout=0.25"]);
        assert_eq!(c.opts.mds_timeout, Duration::from_millis(250));
        for bad in [
            "mds_timeout=abc",
            "mds_timeout=-1",
            "mds_timeout=",
            "mds_timeout=nan",
        ] {
            match parse_args(["h:1", "m", "-o", bad]) {
                Err(ArgError::BadValue { option, .. }) => assert_eq!(option, "mds_timeout"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Last one wins.
        let c = run(&["h:1", "m", "-o", "mds_timeout=1", "-o", "mds_timeout=9"]);
        assert_eq!(c.opts.mds_timeout, Duration::from_secs(9));
    }

    #[test]
    fn flags_take_no_values() {
        assert!(matches!(
            parse_args(["h:1", "m", "-o", "ro=yes"]),
            Err(ArgError::BadValue { .. })
        ));
    }

    #[test]
    fn usage_errors() {
        assert!(matches!(parse_args(["h:1"]), Err(ArgError::Usage(_))));
        assert!(matches!(
            parse_args(Vec::<String>::new()),
            Err(ArgError::Usage(_))
        ));
        assert!(matches!(
            parse_args(["h:1", "m", "x"]),
            Err(ArgError::Usage(_))
        ));
        assert!(matches!(
            parse_args(["h:1", "m", "-o"]),
            Err(ArgError::Usage(_))
        ));
        assert_eq!(
            parse_args(["h:1", "m", "--frob"]).unwrap_err(),
            ArgError::UnknownFlag("--frob".into())
        );
        assert!(matches!(
            parse_args(["nohostport", "m"]),
            Err(ArgError::Usage(_))
        ));
        assert!(matches!(
            parse_args(["h:99999", "m"]),
            Err(ArgError::Usage(_))
        ));
        assert!(matches!(parse_args([":80", "m"]), Err(ArgError::Usage(_))));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_args(["--help"]).unwrap(), Parsed::Help);
        assert_eq!(parse_args(["h:1", "m", "-h"]).unwrap(), Parsed::Help);
        assert_eq!(parse_args(["-V"]).unwrap(), Parsed::Version);
        for opt in [
            "mds_timeout",
            "attr_timeout",
            "entry_timeout",
            "cache_timeout",
            "strict ",
            "close_sync ",
            "disk_cache=",
            "disk_cache_size=",
            "log=",
            "log_level",
            "http=",
            "http_addr_file=",
            "allow_other",
            "fsname",
            "subtype",
            "nosubtype",
            "noatime",
            "default_permissions",
            " ro ",
        ] {
            assert!(HELP.contains(opt), "help lacks {opt}");
        }
    }

    #[test]
    fn config_file_options_and_the_command_line_wins() {
        let mut o = MountOpts::default();
        apply_config(
            &mut o,
            "data_cache = 256\nstrict = true\nnoatime = false\nlog_level = \"debug\"\n",
            "w.toml",
        )
        .unwrap();
        assert_eq!(o.data_cache_mib, 256);
        let Parsed::Run(c) = parse_args(["h:1", "m", "--pack-max-kib", "0"]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(c.opts.client_opts().pack_max, 0);
        let Parsed::Run(c) = parse_args(["h:1", "m", "--pack-max-kib=16"]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(c.opts.client_opts().pack_max, 16 << 10);
        let Parsed::Run(c) = parse_args(["h:1", "m", "-o", "pack_max_kib=8"]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(c.opts.pack_max_kib, 8);
        assert_eq!(MountOpts::default().client_opts().pack_max, 64 << 10);
        assert!(!MountOpts::default().client_opts().close_sync);
        let Parsed::Run(c) = parse_args(["h:1", "m", "-o", "close_sync"]).unwrap() else {
            panic!("not a run")
        };
        assert!(c.opts.client_opts().close_sync);
        assert!(o.strict);
        assert!(!o.noatime);
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        let e = apply_config(&mut o, "data_cach = 1\n", "w.toml").unwrap_err();
        assert_eq!(e.to_string(), "w.toml: unknown key 'data_cach'");
        let e = apply_config(&mut o, "readahead = \"lots\"\n", "w.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("w.toml: key 'readahead': "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.toml");
        std::fs::write(&f, "data_cache = 256\nattr_timeout = 5\n").unwrap();
        let c = run(&[
            "h:1",
            "m",
            "--config",
            f.to_str().unwrap(),
            "-o",
            "data_cache=64",
        ]);
        assert_eq!(c.opts.data_cache_mib, 64);
        assert_eq!(c.opts.attr_timeout, Duration::from_secs(5));
    }

    #[test]
    fn ipv6_and_dash_dash() {
        let c = run(&["[::1]:7000", "--", "-odd-dir"]);
        assert_eq!(c.mds_addr, "[::1]:7000");
        // A group's nodes, as one comma-separated source.
        let g = run(&["http://a:1/, b:2,[::1]:3", "/mnt"]);
        assert_eq!(g.mds_addr, "a:1,b:2,[::1]:3");
        for bad in ["a:1,,b:2", "a:1,b", "a:1,"] {
            assert!(parse_args([bad, "/mnt"]).is_err(), "{bad}");
        }
        assert_eq!(c.mountpoint, PathBuf::from("-odd-dir"));
    }
}
