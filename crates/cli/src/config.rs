//! `--config FILE` for the daemons (`lego manager|memory|processor|storage`):
//! a TOML file whose keys are the daemon's long flags
//!
//! ```toml
//! manager = "10.0.0.1:7700"
//! capacity = "64GiB"
//! listen = "0.0.0.0:7701"
//! advertise = "10.0.0.5:7701"
//! secret-file = "/etc/lego/secret"
//! hide = ["/srv/private", "/etc/lego"]   # a flag given several times
//! unconfined = false                     # a switch: true gives --unconfined
//! ```
//!
//! turned into flags before the command line is parsed, so the file is
//! checked exactly as the command line is (sizes, addresses, CPU lists).
//! A flag given on the command line wins over the file; a key that is not a
//! flag of the daemon is an error naming the file and the key.

use std::ffi::OsString;

/// The subcommands that take `--config`.
const DAEMONS: [&str; 4] = ["manager", "memory", "processor", "storage"];

/// `args` with the flags of `--config FILE` added after the subcommand; an
/// error says what is wrong with the file.
pub fn expand(cli: &clap::Command, args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(args);
    };
    if !DAEMONS.contains(&sub) {
        return Ok(args);
    }
    let given: Vec<String> = args[2..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let path = args[2..].iter().enumerate().find_map(|(i, a)| {
        let a = a.to_str()?;
        match a.strip_prefix("--config=") {
            Some(p) => Some(p.to_string()),
            None if a == "--config" => args.get(3 + i).and_then(|p| p.to_str()).map(String::from),
            None => None,
        }
    });
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {path}: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{path} is not valid TOML: {e}"))?;
    let flags: Vec<String> = cli
        .find_subcommand(sub)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" || !flags.contains(&flag) {
            return Err(format!(
                "{path}: `{key}` is not a flag of `lego {sub}` (see lego {sub} --help)"
            ));
        }
        if given.contains(&flag) {
            continue; // the command line wins
        }
        let values = match value {
            toml::Value::Array(items) => items,
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(true) => {
                    extra.push(format!("--{flag}").into());
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                other => {
                    return Err(format!(
                        "{path}: `{key}` must be a string, a number, a boolean or a list of them, not {}",
                        other.type_str()
                    ))
                }
            };
            extra.push(format!("--{flag}").into());
            extra.push(text.into());
        }
    }
    let mut out = args[..2].to_vec();
    out.extend(extra);
    out.extend(args[2..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("lego").subcommand(
            clap::Command::new("memory")
                .arg(clap::Arg::new("capacity").long("capacity"))
                .arg(clap::Arg::new("manager").long("manager"))
                .arg(
                    clap::Arg::new("hide")
                        .long("hide")
                        .action(clap::ArgAction::Append),
                )
                .arg(
                    clap::Arg::new("spin")
                        .long("spin")
                        .action(clap::ArgAction::SetTrue),
                )
                .arg(clap::Arg::new("config").long("config")),
        )
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_files_keys_become_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "capacity = \"4GiB\"\nmanager = \"10.0.0.1:7700\"\nhide = [\"/a\", \"/b\"]\nspin = true\n",
        )
        .unwrap();
        let f = f.to_str().unwrap();
        let out = expand(
            &cli(),
            args(&["lego", "memory", "--config", f, "--capacity", "1GiB"]),
        )
        .unwrap();
        let out: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "lego",
                "memory",
                "--hide",
                "/a",
                "--hide",
                "/b",
                "--manager",
                "10.0.0.1:7700",
                "--spin",
                "--config",
                f,
                "--capacity",
                "1GiB"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(&f, "capasity = \"4GiB\"\n").unwrap();
        let p = f.to_str().unwrap();
        let e = expand(&cli(), args(&["lego", "memory", "--config", p])).unwrap_err();
        assert!(e.contains(p) && e.contains("capasity"), "{e}");
        std::fs::write(&f, "capacity = \n").unwrap();
        let e = expand(&cli(), args(&["lego", "memory", &format!("--config={p}")])).unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = expand(
            &cli(),
            args(&["lego", "memory", "--config", "/nonexistent.toml"]),
        )
        .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let same = args(&["lego", "status", "--config", "x"]);
        assert_eq!(expand(&cli(), same.clone()).unwrap(), same, "only daemons");
    }
}
