//! `--config FILE` for the daemons: a TOML file whose keys are the long
//! flags (`data-dir` or `data_dir` for `--data-dir`), turned into
//! arguments placed before the command line's, so a flag given there wins.
//! An unknown key, a value of the wrong kind or one the flag's own parser
//! refuses is an error that names the key and the file.

use clap::{ArgAction, Command};
use std::ffi::OsString;
use std::path::Path;

/// `argv` (program name first) with the `--config FILE` it names expanded.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut rest = Vec::with_capacity(argv.len());
    let mut file = None;
    let mut it = argv.into_iter();
    if let Some(program) = it.next() {
        rest.push(program);
    }
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        if a == "--config" {
            file = Some(it.next().ok_or("--config needs a file")?);
        } else if let Some(f) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            file = Some(OsString::from(f));
        } else {
            rest.push(a);
        }
    }
    let Some(file) = file else {
        return Ok(rest);
    };
    let path = Path::new(&file);
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let from_file = args_from(cmd, &text, &path.display().to_string())?;
    let mut out = vec![rest.remove(0)];
    out.extend(from_file);
    out.extend(rest);
    Ok(out)
}

/// The arguments a config file's text stands for.
pub fn args_from(cmd: &Command, text: &str, file: &str) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{file}: not valid TOML: {}", e.message()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && !a.is_hide_set())
            .filter(|_| flag != "config" && flag != "help" && flag != "version")
            .ok_or_else(|| format!("{file}: unknown key '{key}'"))?;
        let bad = |why: String| format!("{file}: key '{key}': {why}");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => out.push(OsString::from(format!("--{flag}"))),
                toml::Value::Boolean(false) => {}
                v => return Err(bad(format!("{v} is not true or false"))),
            }
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            v => return Err(bad(format!("{v} is not a string, number or boolean"))),
        };
        // The flag's own parser, on a command holding just that flag.
        Command::new("weft")
            .arg(arg.clone())
            .try_get_matches_from(["weft".to_string(), format!("--{flag}"), text.clone()])
            .map_err(|e| {
                let msg = e.to_string();
                let first = msg
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                bad(first.to_string())
            })?;
        out.push(OsString::from(format!("--{flag}")));
        out.push(OsString::from(text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("d")
            .args_override_self(true)
            .arg(Arg::new("data").long("data").required(true))
            .arg(
                Arg::new("replicas")
                    .long("replicas")
                    .value_parser(clap::value_parser!(u32))
                    .default_value("3"),
            )
            .arg(Arg::new("check").long("check").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
    }

    fn run(file: &str, argv: &[&str]) -> Result<clap::ArgMatches, String> {
        let args = args_from(&cmd(), file, "f.toml")?;
        let mut all: Vec<OsString> = vec!["d".into()];
        all.extend(args);
        all.extend(argv.iter().map(OsString::from));
        cmd().try_get_matches_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let m = run("data = \"/d\"\nreplicas = 2\ncheck = true\n", &[]).unwrap();
        assert_eq!(m.get_one::<String>("data").unwrap(), "/d");
        assert_eq!(*m.get_one::<u32>("replicas").unwrap(), 2);
        assert!(m.get_flag("check"));
        let m = run("data = \"/d\"\nreplicas = 2\n", &["--replicas", "5"]).unwrap();
        assert_eq!(*m.get_one::<u32>("replicas").unwrap(), 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        let e = run("data = \"/d\"\nreplica = 2\n", &[]).unwrap_err();
        assert_eq!(e, "f.toml: unknown key 'replica'");
        let e = run("data = \"/d\"\nreplicas = \"many\"\n", &[]).unwrap_err();
        assert!(e.starts_with("f.toml: key 'replicas': "), "{e}");
        assert!(e.contains("many"), "{e}");
        let e = run("check = 1\n", &[]).unwrap_err();
        assert!(e.starts_with("f.toml: key 'check': "), "{e}");
        let e = run("config = \"x\"\n", &[]).unwrap_err();
        assert_eq!(e, "f.toml: unknown key 'config'");
        let e = run("data = [1]\n", &[]).unwrap_err();
        assert!(e.starts_with("f.toml: key 'data': "), "{e}");
        assert!(run("data = \n", &[])
            .unwrap_err()
            .starts_with("f.toml: not valid TOML"));
    }
}
