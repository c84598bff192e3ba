//! Keys in a PKCS#11 token: SoftHSM2 from Debian (installed by `scripts/test-deps.sh hsm`,
//! which the first test runs; if it cannot install, the tests fail saying so), with tokens
//! in a temporary directory of this test binary.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the module is initialised in this process, so
//! every token is made up front, before the first key is opened: one token per test, each
//! with its own PIN state. Keys are made both ways the issue names: by `pkcs11-tool
//! --keypairgen --key-type EC:edwards25519` (`CKA_EC_PARAMS` = the printable string
//! "edwards25519") and by cryptoki in this process (`CKA_EC_PARAMS` = the OID 1.3.101.112).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use dangan::client::ClientError;
use dangan::cluster::{ClusterKeys, LocalCluster};
use dangan::grant::{GrantAddress, GrantError};
use dangan::identity::token::EC_PARAMS_OID;
use dangan::identity::{Identity, PublicId, Role};

use crate::common;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "271828";
const SO_PIN: &str = "314159";

/// The test binary's SoftHSM: its directory (key files, PIN file) and the module as this
/// process loaded it.
struct Hsm {
    dir: PathBuf,
    ctx: Pkcs11,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs SoftHSM2 and OpenSC if missing, makes the tokens and keys every test here
/// uses, and initialises the module in this process (once per test binary).
fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        common::test_deps(Some("hsm"), "SoftHSM2 and OpenSC are missing");
        let dir = tempfile::Builder::new()
            .prefix("dangan-hsm-")
            .tempdir()
            .unwrap()
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // SAFETY: set once, before this process loads the module; the other tests of the
        // binary do not read this variable.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        for token in ["cluster", "custody", "pin"] {
            run(Command::new("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                token,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ]));
        }
        for (token, label) in [
            ("cluster", "dept"),
            ("cluster", "host"),
            ("custody", "dept"),
            ("pin", "dept"),
        ] {
            pkcs11_tool_keypair(token, label);
        }
        let ctx = Pkcs11::new(MODULE).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        cryptoki_keypair(&ctx, "cluster", "validator");
        let pin = dir.join("user.pin");
        write_private(&pin, format!("{PIN}\n").as_bytes());
        Hsm { dir, ctx }
    })
}

fn pkcs11_tool_keypair(token: &str, label: &str) {
    run(Command::new("pkcs11-tool").args([
        "--module",
        MODULE,
        "--token-label",
        token,
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:edwards25519",
        "--label",
        label,
    ]));
}

/// An Ed25519 key pair made by cryptoki, its curve written as the OID.
fn cryptoki_keypair(ctx: &Pkcs11, token: &str, label: &str) {
    let slot = slot(ctx, token);
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_owned())))
        .unwrap();
    let label = label.as_bytes().to_vec();
    session
        .generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(EC_PARAMS_OID.to_vec()),
                Attribute::Label(label.clone()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label),
            ],
        )
        .unwrap();
}

fn slot(ctx: &Pkcs11, token: &str) -> cryptoki::slot::Slot {
    ctx.get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap_or_else(|| panic!("no token {token}"))
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A key file naming `label` on `token`, its PIN in `pin_file`.
fn key_file(name: &str, role: Role, token: &str, label: &str, pin_file: &Path) -> PathBuf {
    let path = hsm().dir.join(name);
    write_private(
        &path,
        format!(
            "version = 1\nrole = \"{role}\"\n[pkcs11]\nmodule = \"{MODULE}\"\ntoken = \"{token}\"\n\
             key_label = \"{label}\"\npin_file = \"{}\"\n",
            pin_file.display()
        )
        .as_bytes(),
    );
    path
}

fn pin_file() -> PathBuf {
    hsm().dir.join("user.pin")
}

/// A department whose key is in the token stores, grants and revokes (the grantee, with a
/// key file, reads); the validator whose key is in the token signs every block, and the
/// node hosting it makes its QUIC handshakes with its token key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_and_a_validator_in_the_token_store_grant_revoke_and_sign_blocks() {
    let dept_file = key_file("dept.key", Role::Department, "cluster", "dept", &pin_file());
    let validator_file = key_file(
        "validator.key",
        Role::Validator,
        "cluster",
        "validator",
        &pin_file(),
    );
    let host_file = key_file("host.key", Role::Node, "cluster", "host", &pin_file());
    let dept = Identity::load(&dept_file).unwrap();
    let validator = Identity::load(&validator_file).unwrap();
    let host = Identity::load(&host_file).unwrap();
    for id in [&dept, &validator, &host] {
        assert!(id.in_token());
    }
    // The ids as `dangan keys pkcs11-id` prints them (no PIN): the same keys.
    let printed = run(Command::new(common::process::BIN).args([
        "keys",
        "pkcs11-id",
        "--module",
        MODULE,
        "--token",
        "cluster",
        "--key-label",
        "validator",
    ]));
    assert_eq!(
        printed.trim().parse::<PublicId>().unwrap(),
        validator.public()
    );
    assert_eq!(PublicId::load(&dept_file).unwrap(), dept.public());

    let cluster = LocalCluster::start_with_keys(
        6,
        3,
        ClusterKeys {
            department: Some(dept.clone()),
            validator: Some(validator.clone()),
            validator_host: Some(host.clone()),
        },
    )
    .await
    .unwrap();
    let as_dept = common::department(&cluster);
    assert_eq!(as_dept.public(), dept.public());
    let citizen = Identity::generate(Role::Citizen);
    let as_citizen = common::client_as(&cluster, &citizen);

    let bytes = common::data(100 << 10, 24);
    let put = common::put(&as_dept, &bytes).await.unwrap();
    common::grant(&as_dept, &put, &citizen, None).await;
    let key = as_citizen.granted_key(&put.id).await.unwrap();
    assert_eq!(common::read(&as_citizen, &put.id, &key).await, bytes);
    as_dept.revoke(put.id, citizen.public()).await.unwrap();
    assert!(matches!(
        as_citizen.granted_key(&put.id).await,
        Err(ClientError::NotGranted { .. })
    ));
    // The department reads its own document with its data key.
    assert_eq!(common::read(&as_dept, &put.id, &put.key).await, bytes);

    // Every block the chain made (genesis excepted) is signed by the token's validator key,
    // and verifies with the public key read from the token.
    let ledger = cluster.ledger();
    let status = ledger.status();
    assert_eq!(status.validators, vec![validator.public()]);
    let from_token = PublicId::load(&validator_file).unwrap();
    assert!(status.height >= 3, "height {}", status.height);
    for height in 1..=status.height {
        let block = ledger.block(height).unwrap().unwrap();
        block.header.verify_signer(&from_token).unwrap();
        block.header.verify_final(&[from_token]).unwrap();
    }
    for c in [as_dept, as_citizen] {
        c.close().await;
    }
    cluster.shutdown().await;
}

/// The private keys are sensitive and not extractable: the token refuses their value, and
/// what needs the secret itself (the X25519 grant key) says so instead of falling back.
#[test]
fn the_private_key_never_leaves_the_token() {
    let hsm = hsm();
    let file = key_file(
        "custody.key",
        Role::Department,
        "custody",
        "dept",
        &pin_file(),
    );
    let dept = Identity::load(&file).unwrap();

    // A signature made by the token verifies with the id; a changed message does not.
    let sig = dept.try_sign(b"a registration").unwrap();
    dept.public().verify(b"a registration", &sig).unwrap();
    assert!(dept.public().verify(b"a registration!", &sig).is_err());

    let session = hsm.ctx.open_ro_session(slot(&hsm.ctx, "custody")).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let attrs = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token gave out the private key: {attrs:?}"
    );

    // No X25519 grant key for a token identity, and no key file written from it.
    let err = GrantAddress::of(&dept).unwrap_err();
    assert!(matches!(err, GrantError::NoX25519Key(_)), "{err}");
    assert!(err.to_string().contains("PKCS#11 token"), "{err}");
    let err = dept.save(hsm.dir.join("exported.key")).unwrap_err();
    assert!(err.to_string().contains("in a token"), "{err}");
    assert!(!hsm.dir.join("exported.key").exists());
}

/// A wrong PIN is refused with a clear message (and the right one then works); a PIN file
/// others may read is refused before it is read.
#[test]
fn a_wrong_pin_or_an_open_pin_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = &hsm().dir;
    let wrong = dir.join("wrong.pin");
    write_private(&wrong, b"000000\n");
    let err = Identity::load(key_file("wrong.key", Role::Operator, "pin", "dept", &wrong))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(err.contains("\"pin\""), "the token is named: {err}");

    let open = dir.join("open.pin");
    std::fs::write(&open, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Identity::load(key_file("open.key", Role::Operator, "pin", "dept", &open))
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");

    let right = Identity::load(key_file(
        "right.key",
        Role::Operator,
        "pin",
        "dept",
        &pin_file(),
    ))
    .unwrap();
    assert_eq!(right.role(), Role::Operator);
}
