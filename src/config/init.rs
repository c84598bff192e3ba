//! `dangan init`: one node of a real cluster, on the machine it will run on. Writes the
//! node's key (and its validator's), and its `node.toml`, into a directory, and gives back
//! the entries the consortium adds to its shared cluster file and genesis. Never overwrites
//! a key or a config.
//!
//! Not here: a whole cluster on one machine (`local`), or reading the files back (the
//! parent module).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::NodeFile;
#[cfg(test)]
use super::PeerEntry;
use crate::identity::{Identity, IdentityError, PublicId, Role};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error(
        "{} already exists: `dangan init` never overwrites a key or a config (move it away \
         first if you really mean to replace this node)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error(
        "--addr is needed: {0} is not an address other machines can reach (give the \
         address clients and peers connect to, e.g. --addr 10.0.0.5:7101)"
    )]
    Unreachable(SocketAddr),
    #[error("--zone must not be empty (a rack, room or site: shards spread over zones first)")]
    NoZone,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Key(#[from] IdentityError),
    /// What was written is not what `dangan node` reads.
    #[error("the node file written does not read back: {0}")]
    Written(String),
}

/// The node to set up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// UDP address the node listens on.
    pub listen: SocketAddr,
    /// The address others reach it at (defaults to `listen`, which must then be a real
    /// address, not 0.0.0.0 or ::).
    pub addr: Option<SocketAddr>,
    /// Failure zone.
    pub zone: String,
    /// Relative capacity.
    pub weight: u32,
    /// Whether this node also hosts one of the chain's validators.
    pub validator: bool,
    /// Where the node keeps its data: the shard store in `store/` under it, the chain in
    /// `chain.redb`. Relative paths are relative to the config directory.
    pub data_dir: PathBuf,
    /// Where the node serves its metrics and health probes over plain HTTP (none: not).
    pub metrics_listen: Option<SocketAddr>,
}

/// What was written, and what the consortium adds to its shared files.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub node: PublicId,
    pub validator: Option<PublicId>,
    pub config: PathBuf,
    /// The `[[peer]]` entry for the cluster file (and a `[[chain.validator]]` one).
    pub cluster_entry: String,
    /// The `[[node]]` entry for the genesis (and a `[[validator]]` one).
    pub genesis_entry: String,
}

/// Writes `dir/keys/node.key` (and `dir/keys/validator.key`) and `dir/node.toml`; `dir` is
/// created if missing. Refuses before writing anything if any of them exists.
pub fn write(dir: &Path, options: &InitOptions) -> Result<Initialized, InitError> {
    let addr = options.addr.unwrap_or(options.listen);
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(InitError::Unreachable(addr));
    }
    if options.zone.trim().is_empty() {
        return Err(InitError::NoZone);
    }
    let config = dir.join("node.toml");
    let node_key = dir.join("keys/node.key");
    let validator_key = dir.join("keys/validator.key");
    let mut planned = vec![config.clone(), node_key.clone()];
    if options.validator {
        planned.push(validator_key.clone());
    }
    for path in planned
        .iter()
        .flat_map(|p| [p.clone(), Identity::pub_path(p)])
    {
        if path.symlink_metadata().is_ok() {
            return Err(InitError::Exists(path));
        }
    }
    std::fs::create_dir_all(dir.join("keys"))?;
    let node = Identity::generate(Role::Node);
    node.save(&node_key)?;
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let path = |p: &Path| quote(&p.display().to_string());
    let mut node_file = format!(
        "listen = \"{}\"\ndata_dir = {}\nkey = \"keys/node.key\"\ncluster = \"cluster.toml\"\n",
        options.listen,
        path(&options.data_dir.join("store")),
    );
    if let Some(at) = options.metrics_listen {
        // Plain HTTP: a scrape network's address, never a public one (docs/operations.md).
        node_file.push_str(&format!("metrics_listen = \"{at}\"\n"));
    }
    let mut cluster_entry = format!(
        "[[peer]]\nid = \"{}\"\naddr = \"{addr}\"\nzone = {}\nweight = {}\n",
        node.public(),
        quote(&options.zone),
        options.weight
    );
    let mut genesis_entry = format!(
        "[[node]]\nkey = \"{}\"\naddr = \"{addr}\"\nzone = {}\nweight = {}\n",
        node.public(),
        quote(&options.zone),
        options.weight
    );
    let mut validator = None;
    if options.validator {
        let v = Identity::generate(Role::Validator);
        v.save(&validator_key)?;
        node_file.push_str(&format!(
            "\n[validator]\nkey = \"keys/validator.key\"\ngenesis = \"genesis.toml\"\nchain = {}\n",
            path(&options.data_dir.join("chain.redb"))
        ));
        cluster_entry.push_str(&format!(
            "\n[[chain.validator]]\nid = \"{}\"\npeer = \"{}\"\n",
            v.public(),
            node.public()
        ));
        genesis_entry.push_str(&format!(
            "\n[[validator]]\nid = \"{}\"\nname = \"validator at {addr}\"\n",
            v.public()
        ));
        validator = Some(v.public());
    }
    let text = format!(
        "# Written by `dangan init` for the node at {addr} (zone {zone}).\n\
         # Relative paths are relative to this file's directory. Before the first start, put\n\
         # the consortium's cluster.toml{genesis} next to this file. Data lives under {data}.\n\
         # Every field, with its default and meaning: config/node.toml in the source.\n{node_file}",
        zone = options.zone,
        data = options.data_dir.display(),
        genesis = if options.validator {
            " and genesis.toml"
        } else {
            ""
        },
    );
    toml::from_str::<NodeFile>(&text).map_err(|e| InitError::Written(e.to_string()))?;
    std::fs::write(&config, text)?;
    Ok(Initialized {
        node: node.public(),
        validator,
        config,
        cluster_entry,
        genesis_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(validator: bool) -> InitOptions {
        InitOptions {
            listen: "0.0.0.0:7101".parse().unwrap(),
            addr: Some("10.0.0.5:7101".parse().unwrap()),
            zone: "room 2".into(),
            weight: 100,
            validator,
            data_dir: "data".into(),
            metrics_listen: validator.then(|| "10.0.1.5:9101".parse().unwrap()),
        }
    }

    #[test]
    fn writes_a_node_that_reads_back_and_never_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let done = write(dir.path(), &options(true)).unwrap();
        let file: NodeFile =
            toml::from_str(&std::fs::read_to_string(&done.config).unwrap()).unwrap();
        assert_eq!(file.data_dir, Path::new("data/store"));
        assert_eq!(file.validator.unwrap().chain, Path::new("data/chain.redb"));
        assert_eq!(file.metrics_listen, Some("10.0.1.5:9101".parse().unwrap()));
        let key = Identity::load(dir.path().join("keys/node.key")).unwrap();
        assert_eq!(key.public(), done.node);
        // The entries are what the shared files take.
        #[derive(serde::Deserialize)]
        struct Peers {
            peer: Vec<PeerEntry>,
        }
        let peers: Peers = toml::from_str(&done.cluster_entry).unwrap();
        assert_eq!(peers.peer[0].addr, "10.0.0.5:7101".parse().unwrap());
        assert!(
            done.genesis_entry
                .contains(&done.validator.unwrap().to_string())
        );

        // A second run refuses, and changes nothing.
        let before = std::fs::read(dir.path().join("keys/node.key")).unwrap();
        assert!(matches!(
            write(dir.path(), &options(false)),
            Err(InitError::Exists(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join("keys/node.key")).unwrap(),
            before
        );
    }

    #[test]
    fn an_address_no_one_can_reach_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(false);
        o.addr = None;
        assert!(matches!(
            write(dir.path(), &o),
            Err(InitError::Unreachable(_))
        ));
        assert!(!dir.path().join("keys").exists());
        o.addr = Some("10.0.0.5:7101".parse().unwrap());
        o.zone = " ".into();
        assert!(matches!(write(dir.path(), &o), Err(InitError::NoZone)));
    }
}
