//! `dangan local-config`: keys and config files for a cluster of peers on this machine
//! (cluster file, one node file per peer, genesis, a department, an operator and an archives
//! authority key), in a new directory.
//!
//! Not here: reading those files back (the parent module `config`) or starting the peers
//! (`node`).

use std::path::{Path, PathBuf};

use super::{ClusterFile, ConfigError};
use crate::identity::{Identity, IdentityError, Role};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalConfigError {
    #[error("--peers {0}: a cluster needs at least 2 peers (one data shard and one parity shard)")]
    TooFewPeers(usize),
    #[error("--base-port must be a real port (1..=65535), not 0")]
    PortZero,
    #[error("--validators {validators}: between 1 and --peers ({peers})")]
    Validators { validators: usize, peers: usize },
    #[error("--base-port {base_port} + {peers} peers runs past port 65535")]
    PortsRunOut { base_port: u16, peers: usize },
    #[error("{} already exists; choose a new directory", .0.display())]
    Exists(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Key(#[from] IdentityError),
    /// What was written is not what `node`, `put` and `get` accept.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct LocalOptions {
    /// Number of peers (at least 2).
    pub peers: usize,
    /// UDP port of peer 1; peer i listens on 127.0.0.1:(base_port + i - 1).
    pub base_port: u16,
    /// Chain validators (1 ..= peers): nodes 1..=N each host one.
    pub validators: usize,
}

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct LocalConfig {
    pub peers: usize,
    pub base_port: u16,
    /// The last peer's port.
    pub last_port: u16,
    pub k: u16,
    pub m: u16,
}

/// Coding parameters written for `peers` peers: k + m never exceeds the peer count (the
/// cluster file is refused otherwise). m = 2 from six peers on, else m = 1; k takes the
/// remaining peers, at most 4. So 2 peers: 1 + 1, 3: 2 + 1, 4: 3 + 1, 5: 4 + 1, 6 or more:
/// 4 + 2 (the library default).
pub fn coding(peers: usize) -> (u16, u16) {
    let m = if peers >= 6 { 2 } else { 1 };
    let k = peers.saturating_sub(usize::from(m)).clamp(1, 4) as u16;
    (k, m)
}

/// Writes keys and configs for `options.peers` peers on 127.0.0.1 into `dir` (which must not
/// exist), then reads the cluster file back to check it.
pub fn write(dir: &Path, options: LocalOptions) -> Result<LocalConfig, LocalConfigError> {
    let LocalOptions {
        peers,
        base_port,
        validators,
    } = options;
    if peers < 2 {
        return Err(LocalConfigError::TooFewPeers(peers));
    }
    if base_port == 0 {
        return Err(LocalConfigError::PortZero);
    }
    if validators == 0 || validators > peers {
        return Err(LocalConfigError::Validators { validators, peers });
    }
    let last_port = u16::try_from(usize::from(base_port) + peers - 1)
        .map_err(|_| LocalConfigError::PortsRunOut { base_port, peers })?;
    if dir.exists() {
        return Err(LocalConfigError::Exists(dir.to_owned()));
    }
    let (k, m) = coding(peers);
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::create_dir_all(dir.join("data"))?;
    let validator_keys: Vec<Identity> = (0..validators)
        .map(|_| Identity::generate(Role::Validator))
        .collect();
    let mut chain_section =
        String::from("\n# The chain's validators and the peers hosting them.\n[chain]\n");
    let mut genesis_nodes = String::new();
    let mut cluster = format!(
        "# Cluster written by `dangan local-config`: {peers} peers on this machine.\n\
         # k + m = {width} shards per stripe on {width} different peers; any {m} of them may be lost.\n\
         epoch = 1\n\n[coding]\nk = {k}\nm = {m}\nshard_kib = 1024\n\n",
        width = k + m
    );
    for i in 1..=peers {
        let id = Identity::generate(Role::Node);
        id.save(dir.join(format!("keys/peer{i}.key")))?;
        let port = base_port + (i - 1) as u16;
        cluster.push_str(&format!(
            "[[peer]]\nid = \"{}\"\naddr = \"127.0.0.1:{port}\"\nzone = \"zone-{}\"\nweight = 100\n\n",
            id.public(),
            (i - 1) % 3
        ));
        genesis_nodes.push_str(&format!(
            "\n[[node]]\nkey = \"{}\"\naddr = \"127.0.0.1:{port}\"\nzone = \"zone-{}\"\nweight = 100\n",
            id.public(),
            (i - 1) % 3
        ));
        let mut node = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data/peer{i}\"\nkey = \"keys/peer{i}.key\"\ncluster = \"cluster.toml\"\n"
        );
        if i <= validators {
            // Nodes 1..=validators each host one of the chain's validators.
            let v = &validator_keys[i - 1];
            let name = if validators == 1 {
                "validator".to_string()
            } else {
                format!("validator{i}")
            };
            v.save(dir.join(format!("keys/{name}.key")))?;
            node.push_str(&format!(
                "\n[validator]\nkey = \"keys/{name}.key\"\ngenesis = \"genesis.toml\"\nchain = \"data/chain{i}.redb\"\n",
            ));
            chain_section.push_str(&format!(
                "\n[[chain.validator]]\nid = \"{}\"\npeer = \"{}\"\n",
                v.public(),
                id.public()
            ));
        }
        std::fs::write(dir.join(format!("node{i}.toml")), node)?;
    }
    let dept = Identity::generate(Role::Department);
    dept.save(dir.join("keys/department.key"))?;
    cluster.push_str(&format!(
        "[[client]]\nid = \"{}\"\nname = \"department\"\n",
        dept.public()
    ));
    let operator = Identity::generate(Role::Operator);
    operator.save(dir.join("keys/operator.key"))?;
    cluster.push_str(&format!(
        "\n[[client]]\nid = \"{}\"\nname = \"operator\"\n",
        operator.public()
    ));
    let archives = Identity::generate(Role::Archives);
    archives.save(dir.join("keys/archives.key"))?;
    cluster.push_str(&format!(
        "\n[[client]]\nid = \"{}\"\nname = \"archives\"\n",
        archives.public()
    ));
    let mut genesis = format!(
        "# Genesis written by `dangan local-config`: {validators} validator(s), one department, one operator, one archives authority.\n\
         chain_id = \"local\"\n"
    );
    for (n, v) in validator_keys.iter().enumerate() {
        genesis.push_str(&format!(
            "\n[[validator]]\nid = \"{}\"\nname = \"validator{}\"\n",
            v.public(),
            n + 1
        ));
    }
    genesis.push_str(&format!(
        "\n[[account]]\nid = \"{}\"\nrole = \"department\"\nname = \"department\"\n\n\
         [[account]]\nid = \"{}\"\nrole = \"operator\"\nname = \"operator\"\n\n\
         [[account]]\nid = \"{}\"\nrole = \"archives\"\nname = \"archives\"\n\n\
         # The storage peers: the chain's first layout (epoch 1).\n{genesis_nodes}",
        dept.public(),
        operator.public(),
        archives.public()
    ));
    std::fs::write(dir.join("genesis.toml"), genesis)?;
    cluster.push_str(&chain_section);
    let cluster_path = dir.join("cluster.toml");
    std::fs::write(&cluster_path, cluster)?;
    // What we wrote must be what `node`, `put` and `get` accept.
    ClusterFile::load(&cluster_path)?;
    Ok(LocalConfig {
        peers,
        base_port,
        last_port,
        k,
        m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coding_fits_the_peer_count() {
        let expected = [
            (2, (1, 1)),
            (3, (2, 1)),
            (4, (3, 1)),
            (5, (4, 1)),
            (6, (4, 2)),
        ];
        for (peers, km) in expected {
            assert_eq!(coding(peers), km, "{peers} peers");
        }
        assert_eq!(coding(20), (4, 2));
    }
}
