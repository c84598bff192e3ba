//! The `dangan` binary as people and scripts use it: client profiles and `DANGAN_*`
//! variables instead of repeated flags (`dangan profile` says what a command would use and
//! why), documents through real pipes (`put -`, `get -o -`), shell completions, and exit
//! codes that tell refused, not found, unavailable and corrupt apart. Each command runs
//! with `HOME` and `XDG_CONFIG_HOME` in the test's temp dir. Not for what the commands do
//! to documents (`it::cli`).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common;
use crate::common::cli::{Cli, new_key};
use crate::common::process::{ProcessCluster, Run, dangan, is_document_id, run};

/// A user whose home is `home`: no client config file unless the test writes one, and no
/// `DANGAN_*` variable from the environment the tests run in.
fn as_user<I, S>(home: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = dangan(args);
    user_env(&mut cmd, home);
    cmd
}

fn user_env(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .env_remove("DANGAN_CONFIG")
        .env_remove("DANGAN_PROFILE")
        .env_remove("DANGAN_KEY")
        .env_remove("DANGAN_CLUSTER")
        .env_remove("DANGAN_KEYRING");
}

/// Writes `home`'s client config file (`$XDG_CONFIG_HOME/dangan/config.toml`).
fn write_client_config(home: &Path, text: &str) -> PathBuf {
    let path = home.join("xdg/dangan/config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

/// Runs `cmd` with `input` on its standard input (a pipe, written from another thread)
/// and returns its exit status and standard output (read from a pipe); its standard error
/// goes to `logs/NAME.stderr`.
fn through_pipes(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    logs: &Path,
    name: &str,
) -> (bool, Vec<u8>) {
    let err = logs.join(format!("{name}.stderr"));
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().expect("spawning dangan");
    let writer = input.map(|bytes| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            // In chunks, as a pipe delivers them; closing stdin is the end of the document.
            for chunk in bytes.chunks(100_000) {
                stdin.write_all(chunk).unwrap();
            }
        })
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    (status.success(), out)
}

#[test]
fn profiles_environment_and_flags_choose_the_identity_and_documents_go_through_pipes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("home");
    fs::create_dir_all(&home).unwrap();
    let cluster = ProcessCluster::start(root, 3, 1);
    let logs = cluster.logs.clone();
    let dept_key = cluster.path("keys/department.key");
    let citizen_key = root.join("citizen.key");
    let citizen_id = new_key("citizen", &citizen_key, &logs, "keys-new-citizen");

    // No config file: the defaults, each said to be one.
    let shown = run(as_user(&home, ["profile"]), &logs, "profile-none").expect_ok("profile");
    assert!(
        shown.stdout.contains("profile:     none")
            && shown
                .stdout
                .contains("key:         config/keys/department.key (missing) (from default)"),
        "{}",
        shown.describe()
    );

    // A config file with two profiles, the department's the default; relative paths are
    // relative to the file.
    let file = write_client_config(
        &home,
        &format!(
            "default = \"dept\"\n\
             [profile.dept]\nkey = {:?}\ncluster = {:?}\nkeyring = \"dept-keyring\"\n\
             [profile.citizen]\nkey = {:?}\ncluster = {:?}\nkeyring = \"citizen-keyring\"\n",
            dept_key,
            cluster.path("cluster.toml"),
            citizen_key,
            cluster.path("cluster.toml"),
        ),
    );
    let dept_ring = file.parent().unwrap().join("dept-keyring");
    let shown = run(as_user(&home, ["profile"]), &logs, "profile-default").expect_ok("profile");
    let dept_id = run(
        dangan(["keys".as_ref(), "show".as_ref(), dept_key.as_os_str()]),
        &logs,
        "keys-show",
    )
    .expect_ok("keys show")
    .stdout;
    let in_file = format!("profile dept in {}", file.display());
    assert!(
        shown.stdout.contains(&format!(
            "profile:     dept (from the default in {})",
            file.display()
        )) && shown.stdout.contains(dept_id.trim())
            && shown.stdout.contains("(department)")
            && shown.stdout.contains(&format!(
                "key:         {} (from {in_file})",
                dept_key.display()
            ))
            && shown.stdout.contains(&format!(
                "keyring:     {} (missing) (from {in_file})",
                dept_ring.display()
            )),
        "{}",
        shown.describe()
    );
    let listed =
        run(as_user(&home, ["profile", "list"]), &logs, "profile-list").expect_ok("profile list");
    assert!(
        listed.stdout.contains("dept (default)\tkey ") && listed.stdout.contains("citizen\tkey "),
        "{}",
        listed.describe()
    );

    // DANGAN_PROFILE picks another profile, DANGAN_KEY beats the profile, a flag beats both.
    let mut cmd = as_user(&home, ["profile"]);
    cmd.env("DANGAN_PROFILE", "citizen");
    let shown = run(cmd, &logs, "profile-env").expect_ok("profile");
    assert!(
        shown
            .stdout
            .contains("profile:     citizen (from environment DANGAN_PROFILE)")
            && shown.stdout.contains(&citizen_id),
        "{}",
        shown.describe()
    );
    let mut cmd = as_user(&home, ["profile"]);
    cmd.env("DANGAN_KEY", &citizen_key);
    let shown = run(cmd, &logs, "profile-env-key").expect_ok("profile");
    assert!(
        shown.stdout.contains(&format!(
            "key:         {} (from environment DANGAN_KEY)",
            citizen_key.display()
        )) && shown.stdout.contains(&format!(
            "cluster:     {}",
            cluster.path("cluster.toml").display()
        )),
        "{}",
        shown.describe()
    );
    let mut cmd = as_user(
        &home,
        ["profile".as_ref(), "--key".as_ref(), dept_key.as_os_str()],
    );
    cmd.env("DANGAN_KEY", &citizen_key);
    let shown = run(cmd, &logs, "profile-flag").expect_ok("profile");
    assert!(
        shown.stdout.contains(&format!(
            "key:         {} (from flag --key)",
            dept_key.display()
        )),
        "{}",
        shown.describe()
    );

    // A document through pipes, with no flag at all: `put -` reads standard input (3 MiB,
    // two stripes, no size ahead), `get -o -` writes the document and nothing else.
    let bytes = common::data(3 << 20, 0x9193);
    let (ok, out) = through_pipes(
        as_user(&home, ["put", "-"]),
        Some(bytes.clone()),
        &logs,
        "put-stdin",
    );
    let id = String::from_utf8(out).unwrap().trim().to_owned();
    assert!(ok && is_document_id(&id), "put - printed {id:?}");
    assert!(
        dept_ring.join(format!("{id}.key")).is_file(),
        "the profile's keyring"
    );
    let (ok, out) = through_pipes(
        as_user(&home, ["get", &id, "-o", "-"]),
        None,
        &logs,
        "get-stdout",
    );
    assert!(
        ok,
        "{}",
        fs::read_to_string(logs.join("get-stdout.stderr")).unwrap()
    );
    assert!(
        out == bytes,
        "get -o - wrote other bytes ({} of {})",
        out.len(),
        bytes.len()
    );
    let said = fs::read_to_string(logs.join("get-stdout.stderr")).unwrap();
    assert!(
        said.contains(&format!("{} bytes written to standard output", bytes.len())),
        "{said}"
    );

    // A shell pipeline: get into put stores the same bytes again (under another key, so
    // another id), and that copy reads back identical.
    let pipeline = format!(
        "{bin} get {id} -o - | {bin} put -",
        bin = crate::common::process::BIN
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", &pipeline]);
    user_env(&mut sh, &home);
    let (ok, out) = through_pipes(sh, None, &logs, "pipeline");
    let copy = String::from_utf8(out).unwrap().trim().to_owned();
    assert!(
        ok && is_document_id(&copy) && copy != id,
        "pipeline printed {copy:?}"
    );
    let (ok, out) = through_pipes(
        as_user(&home, ["get", &copy, "-o", "-"]),
        None,
        &logs,
        "get-copy",
    );
    assert!(ok && out == bytes, "the piped copy reads back other bytes");

    // Clear errors, with the configuration exit code (7): a profile the file lacks, a key
    // path that does not exist (saying where the path came from), a file that does not
    // parse (with its line).
    let refused = run(
        as_user(&home, ["profile", "--profile", "nope"]),
        &logs,
        "profile-nope",
    )
    .expect_fail("an unknown profile");
    assert!(
        refused.code == Some(7)
            && refused
                .stderr
                .contains("no profile \"nope\" (named by flag --profile)")
            && refused.stderr.contains("only: citizen, dept"),
        "{}",
        refused.describe()
    );
    let mut cmd = as_user(&home, ["chain", "status"]);
    cmd.env("DANGAN_KEY", root.join("gone.key"));
    let refused = run(cmd, &logs, "key-missing").expect_fail("a missing key file");
    assert!(
        refused.code == Some(7)
            && refused.stderr.contains(&format!(
                "key file {} (from environment DANGAN_KEY) does not exist",
                root.join("gone.key").display()
            )),
        "{}",
        refused.describe()
    );
    write_client_config(&home, "default = \"dept\"\n[profile.dept]\nkey = 3\n");
    let refused = run(as_user(&home, ["profile"]), &logs, "profile-bad-file")
        .expect_fail("a config file that does not parse");
    assert!(
        refused.code == Some(7) && refused.stderr.contains("line 3"),
        "{}",
        refused.describe()
    );
    cluster.assert_no_panics();
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let done = run(
            as_user(tmp.path(), ["completions", shell]),
            tmp.path(),
            shell,
        )
        .expect_ok("completions");
        assert!(
            done.stdout.contains("dangan")
                && done.stdout.contains("profile")
                && done.stdout.contains("keyring"),
            "{shell}: {}",
            done.describe()
        );
    }
    let refused = run(
        as_user(tmp.path(), ["completions", "tcsh"]),
        tmp.path(),
        "tcsh",
    )
    .expect_fail("an unknown shell");
    assert_eq!(
        refused.code,
        Some(2),
        "a usage error: {}",
        refused.describe()
    );
}

/// `dangan ARGS` as `cli`, expected to fail with exit code `code`; its output.
fn fails_with(cli: &Cli, args: &[&str], name: &str, code: i32) -> Run {
    let r = cli.run(args, name).expect_fail(name);
    assert_eq!(r.code, Some(code), "{name}: {}", r.describe());
    r
}

#[test]
fn exit_codes_tell_usage_refused_not_found_corrupt_and_unavailable_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut cluster = ProcessCluster::start(root, 3, 1);
    let logs = cluster.logs.clone();
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &cluster.path("keys/department.key"), &keyring);
    let input = root.join("a.bin");
    fs::write(&input, common::data(1 << 20, 0xe1)).unwrap();
    let a = dept.put(&input, "put-a");

    // 2: usage (clap).
    let usage = run(dangan(["get", &a]), &logs, "usage").expect_fail("get without -o");
    assert_eq!(usage.code, Some(2), "{}", usage.describe());
    // 3: refused: a citizen with no grant.
    let citizen_key = root.join("citizen.key");
    new_key("citizen", &citizen_key, &logs, "keys-new-citizen");
    let citizen = Cli::new(&cluster, &citizen_key, &root.join("citizen-keyring"));
    let out = root.join("out.bin");
    let out_arg = out.to_str().unwrap();
    fails_with(&citizen, &["get", &a, "-o", out_arg], "refused", 3);
    // 4: not found: an id never registered.
    let unknown = blake3::hash(b"never stored").to_hex().to_string();
    fails_with(&dept, &["get", &unknown, "-o", out_arg], "not-found", 4);
    fails_with(&dept, &["verify", &unknown], "verify-not-found", 4);
    // 7: configuration: a key file that is not there.
    let nobody = Cli::new(&cluster, &root.join("nobody.key"), &keyring);
    fails_with(&nobody, &["get", &a, "-o", out_arg], "no-key", 7);

    // 6: corrupt: a bit flipped in every shard body of document A on every peer.
    for i in 1..=3 {
        let body_dir = cluster
            .path(&format!("data/peer{i}"))
            .join(dangan::store::BODY_DIR);
        for entry in fs::read_dir(&body_dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let mut body = fs::read(&path).unwrap();
            body[100] ^= 1;
            fs::write(&path, body).unwrap();
        }
    }
    let corrupt = fails_with(&dept, &["get", &a, "-o", out_arg], "corrupt", 6);
    assert!(corrupt.stderr.contains("corrupt"), "{}", corrupt.describe());

    // 5: unavailable: document B readable, then two of its three peers stopped (k = 2).
    let input = root.join("b.bin");
    fs::write(&input, common::data(1 << 20, 0xe2)).unwrap();
    let b = dept.put(&input, "put-b");
    dept.get(&b, &out, "get-b").expect_ok("get of B");
    cluster.kill(2);
    cluster.kill(3);
    fails_with(&dept, &["get", &b, "-o", out_arg], "unavailable", 5);
    cluster.assert_no_panics();
}
