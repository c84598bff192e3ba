//! Client profiles: which key file, cluster file and keyring a client command uses, and
//! where each came from. One resolution path, in this order for each value: the command's
//! flag, then its `DANGAN_*` environment variable, then the chosen profile of the client
//! config file, then the built-in default (paths under `config/`, as `local-config`
//! writes them).
//!
//! The client config file is `$DANGAN_CONFIG`, else `$XDG_CONFIG_HOME/dangan/config.toml`,
//! else `$HOME/.config/dangan/config.toml`. A missing file has no profiles. The profile is
//! `--profile`, else `$DANGAN_PROFILE`, else the file's `default`; a profile that is named
//! but not in the file is an error. Relative paths in the file are resolved against its
//! directory, as in every Dangan config file.
//!
//! ```toml
//! format = 1            # optional: the file's format version
//! default = "prod"      # the profile used when none is named
//! [profile.prod]
//! key = "/etc/dangan/department.key"
//! cluster = "/etc/dangan/cluster.toml"
//! keyring = "/var/lib/dangan/keyring"
//! ```
//!
//! Not here: loading the key or the cluster (the caller does, with the paths resolved).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, read_toml};

/// The client config file's format version this build writes and reads.
pub const CLIENT_CONFIG_FORMAT: u32 = 1;

/// The built-in defaults: the paths `dangan local-config` writes, relative to the working
/// directory.
pub const DEFAULT_KEY: &str = "config/keys/department.key";
pub const DEFAULT_CLUSTER: &str = "config/cluster.toml";
pub const DEFAULT_KEYRING: &str = "config/keyring";

/// The client config file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    /// Format version (absent: 1).
    #[serde(default)]
    pub format: Option<u32>,
    /// The profile used when neither `--profile` nor `DANGAN_PROFILE` names one.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub profile: BTreeMap<String, ProfileEntry>,
}

/// `[profile.NAME]`: any of the three paths; those left out fall through to the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    pub key: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
}

/// What the command line said (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct ClientFlags {
    pub profile: Option<String>,
    pub key: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
}

/// The environment variables resolution reads (empty values count as unset).
#[derive(Debug, Clone, Default)]
pub struct ClientEnv {
    pub config: Option<PathBuf>,
    pub profile: Option<String>,
    pub key: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl ClientEnv {
    /// This process's `DANGAN_CONFIG`, `DANGAN_PROFILE`, `DANGAN_KEY`, `DANGAN_CLUSTER`,
    /// `DANGAN_KEYRING`, `XDG_CONFIG_HOME` and `HOME`.
    pub fn from_process() -> ClientEnv {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let path = |name: &str| var(name).map(PathBuf::from);
        ClientEnv {
            config: path("DANGAN_CONFIG"),
            profile: var("DANGAN_PROFILE").map(|v| v.to_string_lossy().into_owned()),
            key: path("DANGAN_KEY"),
            cluster: path("DANGAN_CLUSTER"),
            keyring: path("DANGAN_KEYRING"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            home: path("HOME"),
        }
    }

    /// Where the client config file is (it may not exist), and what chose it.
    pub fn config_path(&self) -> Option<(PathBuf, Source)> {
        if let Some(p) = &self.config {
            return Some((p.clone(), Source::Env("DANGAN_CONFIG")));
        }
        // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
        let base = match &self.xdg_config_home {
            Some(x) if x.is_absolute() => x.clone(),
            _ => self.home.as_ref()?.join(".config"),
        };
        Some((base.join("dangan").join("config.toml"), Source::Default))
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command's flag (`--key`, ...).
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A profile of the client config file.
    Profile { name: String, file: PathBuf },
    /// The client config file's `default`.
    FileDefault(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "environment {var}"),
            Source::Profile { name, file } => write!(f, "profile {name} in {}", file.display()),
            Source::FileDefault(file) => write!(f, "the default in {}", file.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A resolved path and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub source: Source,
}

/// What a client command uses.
#[derive(Debug, Clone)]
pub struct ClientPaths {
    /// The client config file, if one was looked for, and whether it exists.
    pub config: Option<(PathBuf, bool)>,
    /// The profile in use and what chose it (`--profile`, `DANGAN_PROFILE`, the file's
    /// `default`).
    pub profile: Option<(String, Source)>,
    pub key: Resolved,
    pub cluster: Resolved,
    pub keyring: Resolved,
}

impl ClientPaths {
    /// Resolves `flags` against `env` and the client config file (read here).
    pub fn resolve(flags: &ClientFlags, env: &ClientEnv) -> Result<ClientPaths, ConfigError> {
        let config_path = env.config_path();
        let file = match &config_path {
            Some((path, _)) if path.exists() => Some((path.clone(), ClientConfigFile::load(path)?)),
            _ => None,
        };
        let chosen = match (&flags.profile, &env.profile) {
            (Some(name), _) => Some((name.clone(), Source::Flag("--profile"))),
            (None, Some(name)) => Some((name.clone(), Source::Env("DANGAN_PROFILE"))),
            (None, None) => file.as_ref().and_then(|(path, f)| {
                f.default
                    .clone()
                    .map(|name| (name, Source::FileDefault(path.clone())))
            }),
        };
        let profile = match &chosen {
            None => None,
            Some((name, source)) => {
                let Some((path, f)) = &file else {
                    let looked = config_path.as_ref().map_or_else(
                        || "no client config file (HOME is not set)".to_owned(),
                        |(p, _)| format!("{} does not exist", p.display()),
                    );
                    return Err(ConfigError::NoProfile {
                        name: name.clone(),
                        from: source.to_string(),
                        message: looked,
                    });
                };
                let Some(entry) = f.profile.get(name) else {
                    let known: Vec<&str> = f.profile.keys().map(String::as_str).collect();
                    return Err(ConfigError::NoProfile {
                        name: name.clone(),
                        from: source.to_string(),
                        message: format!(
                            "{} has {}",
                            path.display(),
                            if known.is_empty() {
                                "no profiles".to_owned()
                            } else {
                                format!("only: {}", known.join(", "))
                            }
                        ),
                    });
                };
                Some((name.clone(), path.clone(), entry.clone()))
            }
        };
        let from_profile = |pick: fn(&ProfileEntry) -> &Option<PathBuf>| {
            profile.as_ref().and_then(|(name, file, entry)| {
                pick(entry).as_ref().map(|p| Resolved {
                    path: relative_to(file, p),
                    source: Source::Profile {
                        name: name.clone(),
                        file: file.clone(),
                    },
                })
            })
        };
        let pick = |flag: &Option<PathBuf>,
                    flag_name: &'static str,
                    var: &Option<PathBuf>,
                    var_name: &'static str,
                    entry: fn(&ProfileEntry) -> &Option<PathBuf>,
                    default: &str| {
            if let Some(p) = flag {
                Resolved {
                    path: p.clone(),
                    source: Source::Flag(flag_name),
                }
            } else if let Some(p) = var {
                Resolved {
                    path: p.clone(),
                    source: Source::Env(var_name),
                }
            } else if let Some(r) = from_profile(entry) {
                r
            } else {
                Resolved {
                    path: default.into(),
                    source: Source::Default,
                }
            }
        };
        Ok(ClientPaths {
            config: config_path.map(|(p, _)| {
                let exists = p.exists();
                (p, exists)
            }),
            key: pick(
                &flags.key,
                "--key",
                &env.key,
                "DANGAN_KEY",
                |e| &e.key,
                DEFAULT_KEY,
            ),
            cluster: pick(
                &flags.cluster,
                "--cluster",
                &env.cluster,
                "DANGAN_CLUSTER",
                |e| &e.cluster,
                DEFAULT_CLUSTER,
            ),
            keyring: pick(
                &flags.keyring,
                "--keyring",
                &env.keyring,
                "DANGAN_KEYRING",
                |e| &e.keyring,
                DEFAULT_KEYRING,
            ),
            profile: chosen,
        })
    }

    /// The key file's path, checked to exist: a missing one names where the path came
    /// from.
    pub fn key_path(&self) -> Result<&Path, ConfigError> {
        existing(&self.key, "key file")
    }

    /// The cluster file's path, checked to exist.
    pub fn cluster_path(&self) -> Result<&Path, ConfigError> {
        existing(&self.cluster, "cluster file")
    }
}

fn existing<'a>(r: &'a Resolved, what: &'static str) -> Result<&'a Path, ConfigError> {
    if r.path.exists() {
        Ok(&r.path)
    } else {
        Err(ConfigError::MissingPath {
            what,
            path: r.path.clone(),
            from: r.source.to_string(),
        })
    }
}

fn relative_to(file: &Path, p: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl ClientConfigFile {
    /// Reads and checks a client config file: TOML (a parse error names the line), a
    /// format this build reads.
    pub fn load(path: &Path) -> Result<ClientConfigFile, ConfigError> {
        let file: ClientConfigFile = read_toml(path)?;
        if let Some(found) = file.format
            && found > CLIENT_CONFIG_FORMAT
        {
            return Err(ConfigError::NewerFormat {
                what: "client config",
                path: path.to_owned(),
                found: u64::from(found),
                supported: u64::from(CLIENT_CONFIG_FORMAT),
            });
        }
        if let Some(name) = &file.default
            && !file.profile.contains_key(name)
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("default = {name:?} names no [profile.{name}]"),
            });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(dir: &Path) -> ClientEnv {
        ClientEnv {
            home: Some(dir.to_owned()),
            ..ClientEnv::default()
        }
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join(".config/dangan/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flag_beats_env_beats_profile_beats_default() {
        let tmp = tempfile::tempdir().unwrap();
        let file = write_config(
            tmp.path(),
            "default = \"a\"\n[profile.a]\nkey = \"a.key\"\ncluster = \"/a/cluster.toml\"\nkeyring = \"ring\"\n",
        );
        let mut env = env_with(tmp.path());
        let flags = ClientFlags::default();
        let r = ClientPaths::resolve(&flags, &env).unwrap();
        let dir = file.parent().unwrap();
        assert_eq!(r.key.path, dir.join("a.key"), "relative to the file");
        assert_eq!(r.cluster.path, Path::new("/a/cluster.toml"));
        assert!(matches!(&r.key.source, Source::Profile { name, .. } if name == "a"));

        env.key = Some("env.key".into());
        let r = ClientPaths::resolve(&flags, &env).unwrap();
        assert_eq!(r.key.source, Source::Env("DANGAN_KEY"));
        assert_eq!(r.key.path, Path::new("env.key"));

        let flags = ClientFlags {
            key: Some("flag.key".into()),
            ..ClientFlags::default()
        };
        let r = ClientPaths::resolve(&flags, &env).unwrap();
        assert_eq!(r.key.source, Source::Flag("--key"));
        assert_eq!(r.key.path, Path::new("flag.key"));
        assert!(matches!(r.keyring.source, Source::Profile { .. }));

        // No file at all: the defaults.
        let empty = tempfile::tempdir().unwrap();
        let r = ClientPaths::resolve(&ClientFlags::default(), &env_with(empty.path())).unwrap();
        assert_eq!(r.cluster.source, Source::Default);
        assert_eq!(r.cluster.path, Path::new(DEFAULT_CLUSTER));
        assert!(r.profile.is_none());
    }

    #[test]
    fn the_profile_is_chosen_by_flag_then_env_then_default() {
        let tmp = tempfile::tempdir().unwrap();
        write_config(
            tmp.path(),
            "default = \"a\"\n[profile.a]\nkey = \"a.key\"\n[profile.b]\nkey = \"b.key\"\n[profile.c]\nkey = \"c.key\"\n",
        );
        let mut env = env_with(tmp.path());
        let name = |flags: &ClientFlags, env: &ClientEnv| {
            ClientPaths::resolve(flags, env).unwrap().profile.unwrap().0
        };
        assert_eq!(name(&ClientFlags::default(), &env), "a");
        env.profile = Some("b".into());
        assert_eq!(name(&ClientFlags::default(), &env), "b");
        let flags = ClientFlags {
            profile: Some("c".into()),
            ..ClientFlags::default()
        };
        assert_eq!(name(&flags, &env), "c");
        // XDG_CONFIG_HOME wins over HOME; DANGAN_CONFIG over both.
        let xdg = tempfile::tempdir().unwrap();
        env.xdg_config_home = Some(xdg.path().to_owned());
        let err = ClientPaths::resolve(&flags, &env).unwrap_err().to_string();
        assert!(
            err.contains("no profile \"c\"") && err.contains("does not exist"),
            "{err}"
        );
        env.config = Some(tmp.path().join(".config/dangan/config.toml"));
        assert_eq!(name(&flags, &env), "c");
    }

    #[test]
    fn clear_errors_for_a_missing_profile_a_bad_file_and_a_missing_key() {
        let tmp = tempfile::tempdir().unwrap();
        write_config(tmp.path(), "[profile.a]\nkey = \"a.key\"\n");
        let env = env_with(tmp.path());
        let flags = ClientFlags {
            profile: Some("nope".into()),
            ..ClientFlags::default()
        };
        let err = ClientPaths::resolve(&flags, &env).unwrap_err().to_string();
        assert!(
            err.contains("no profile \"nope\"") && err.contains("only: a"),
            "{err}"
        );

        let r = ClientPaths::resolve(&ClientFlags::default(), &env).unwrap();
        assert!(r.profile.is_none(), "no default: no profile");
        let flags = ClientFlags {
            profile: Some("a".into()),
            ..ClientFlags::default()
        };
        let r = ClientPaths::resolve(&flags, &env).unwrap();
        let err = r.key_path().unwrap_err().to_string();
        assert!(
            err.contains("a.key") && err.contains("does not exist") && err.contains("profile a"),
            "{err}"
        );

        write_config(tmp.path(), "[profile.a]\nkey = \"a.key\"\nkye = 1\n");
        let err = ClientPaths::resolve(&ClientFlags::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");

        write_config(tmp.path(), "format = 2\n");
        let err = ClientPaths::resolve(&ClientFlags::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 2") && err.contains("up to 1"), "{err}");
    }
}
