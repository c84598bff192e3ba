//! Shared fixtures of the fuzz targets: a small deterministic chain ("the fuzz world") whose
//! keys are fixed seeds, so seed inputs written by `examples/write_seeds.rs` carry valid
//! signatures and a block that applies, and the targets can sign what they build.
//!
//! Not for: anything the main crate runs; this crate is its own workspace.

use std::sync::OnceLock;

use dangan::chain::block::BlockHeader;
use dangan::chain::state::{Genesis, GenesisAccount, State};
use dangan::chain::store::genesis_header;
use dangan::identity::{Identity, PublicId, Role};
use dangan::placement::NodeInfo;

/// The fuzz world: two validators, one account of every other role, three storage nodes.
pub struct World {
    /// Validators, operator, department, other department, citizen, nodes (by index).
    pub identities: Vec<Identity>,
    pub validators: Vec<PublicId>,
    pub state: State,
    pub genesis: BlockHeader,
}

pub const VALIDATOR: usize = 0;
pub const VALIDATOR_2: usize = 1;
pub const OPERATOR: usize = 2;
pub const DEPARTMENT: usize = 3;
pub const DEPARTMENT_2: usize = 4;
pub const CITIZEN: usize = 5;
pub const FIRST_NODE: usize = 6;
pub const NODES: usize = 3;

fn identity(i: usize) -> Identity {
    let role = match i {
        VALIDATOR | VALIDATOR_2 => Role::Validator,
        OPERATOR => Role::Operator,
        DEPARTMENT | DEPARTMENT_2 => Role::Department,
        CITIZEN => Role::Citizen,
        _ => Role::Node,
    };
    Identity::from_seed([i as u8 + 1; 32], role)
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let identities: Vec<Identity> = (0..FIRST_NODE + NODES).map(identity).collect();
        let account = |i: usize| GenesisAccount::of(&identities[i], identities[i].role());
        let genesis = Genesis {
            chain_id: "fuzz".into(),
            validators: vec![account(VALIDATOR), account(VALIDATOR_2)],
            accounts: vec![
                account(OPERATOR),
                account(DEPARTMENT),
                account(DEPARTMENT_2),
                account(CITIZEN),
            ],
            nodes: (0..NODES)
                .map(|n| NodeInfo {
                    key: identities[FIRST_NODE + n].public(),
                    zone: format!("z{n}"),
                    weight: 100,
                    addr: format!("127.0.0.1:{}", 7101 + n),
                })
                .collect(),
        };
        let state = State::genesis(&genesis).expect("the fuzz world's genesis is valid");
        World {
            validators: vec![
                identities[VALIDATOR].public(),
                identities[VALIDATOR_2].public(),
            ],
            genesis: genesis_header(&state),
            identities,
            state,
        }
    })
}

impl World {
    /// The identity a fuzzed selector byte names.
    pub fn signer(&self, selector: u8) -> &Identity {
        &self.identities[usize::from(selector) % self.identities.len()]
    }
}
