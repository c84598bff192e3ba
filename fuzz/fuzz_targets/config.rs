//! Configuration files, read from disk exactly as `dangan` reads them: the cluster file
//! (`ClusterFile::load`), the node file (`NodeFile::load`), the genesis file
//! (`Genesis::load`, then `State::genesis`) and key files (`Identity::load`,
//! `PublicId::load`).
//!
//! The first byte picks the kind; the rest is written to a scratch file (on tmpfs when
//! there is one) and loaded.
//!
//! Properties: nothing panics; a cluster file that validates can place every stripe on
//! k + m distinct peers; a key file that loads names the same public id through
//! `PublicId::load`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dangan::chain::state::{Genesis, State};
use dangan::chain::store::genesis_header;
use dangan::config::{ClusterFile, NodeFile};
use dangan::identity::{Identity, PublicId};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("dangan-fuzz-config-{}", std::process::id()))
    })
}

fn write(bytes: &[u8]) -> &'static PathBuf {
    let path = scratch();
    std::fs::write(path, bytes).expect("writing the scratch file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = write(rest);
    match mode % 5 {
        0 => {
            let Ok(cluster) = ClusterFile::load(path) else {
                return;
            };
            let width = cluster.params.width();
            for stripe in 0u8..4 {
                let placed = cluster
                    .layout
                    .place(&[stripe; 32], width)
                    .expect("a validated cluster places every stripe");
                assert_eq!(placed.len(), width);
                for (i, node) in placed.iter().enumerate() {
                    assert!(node.weight > 0, "placed on a drained peer");
                    assert!(placed[..i].iter().all(|n| n.key != node.key));
                }
            }
            if let Some(q) = cluster.write_quorum {
                assert!(q >= usize::from(cluster.params.k) && q <= width);
            }
            if let Some(chain) = &cluster.chain {
                assert!(!chain.validators.is_empty());
            }
        }
        1 => {
            let _ = NodeFile::load(path);
        }
        2 => {
            let Ok(genesis) = Genesis::load(path) else {
                return;
            };
            if let Ok(state) = State::genesis(&genesis) {
                assert!(!state.validators().is_empty());
                let _ = genesis_header(&state);
            }
        }
        3 => {
            if let Ok(id) = Identity::load(path) {
                assert_eq!(PublicId::load(path).ok(), Some(id.public()));
            }
        }
        _ => {
            let _ = PublicId::load(path);
        }
    }
});
