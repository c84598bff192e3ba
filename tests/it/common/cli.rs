//! `dangan` commands as a cluster's users run them: each with its key, the cluster file and
//! its keyring, every command's output kept in the cluster's log directory. Not for the
//! peers themselves (`process::ProcessCluster`) nor for what a command must print: the
//! tests assert that.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{ProcessCluster, Run, dangan, is_document_id, run, run_within};

/// Someone who runs `dangan` commands against a [`ProcessCluster`].
pub struct Cli {
    args: Vec<PathBuf>,
    logs: PathBuf,
}

impl Cli {
    /// Commands run as the key in file `key`, keeping document keys in `keyring`.
    pub fn new(cluster: &ProcessCluster, key: &Path, keyring: &Path) -> Cli {
        Cli {
            args: cluster.client_args(key, keyring),
            logs: cluster.logs.clone(),
        }
    }

    /// The same user with `--data-dir DIR` (where the operator's commands keep their state).
    pub fn with_data_dir(mut self, dir: PathBuf) -> Cli {
        self.args.extend(["--data-dir".into(), dir]);
        self
    }

    /// `dangan ARGS` followed by this user's arguments.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = dangan(args);
        cmd.args(&self.args);
        cmd
    }

    /// Runs `dangan ARGS` as this user to completion; its output goes to `logs/NAME.*`.
    pub fn run<I, S>(&self, args: I, name: &str) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(args), &self.logs, name)
    }

    /// [`Cli::run`] with another time limit.
    pub fn run_within<I, S>(&self, args: I, name: &str, limit: Duration) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_within(self.command(args), &self.logs, name, limit)
    }

    /// `dangan put INPUT`, which must succeed and print the document's id last; the id.
    pub fn put(&self, input: &Path, name: &str) -> String {
        let put = self
            .run(["put".as_ref(), input.as_os_str()], name)
            .expect_ok("put");
        let id = put.last_line();
        assert!(
            is_document_id(&id),
            "put must print a document id last: {}",
            put.describe()
        );
        id
    }

    /// `dangan get ID -o OUT`, run to completion (it may fail: the test says whether it must).
    pub fn get(&self, id: &str, out: &Path, name: &str) -> Run {
        self.run(
            ["get".as_ref(), id.as_ref(), "-o".as_ref(), out.as_os_str()],
            name,
        )
    }
}

/// `dangan keys new --role ROLE --out OUT`, which must succeed; the id it prints.
pub fn new_key(role: &str, out: &Path, logs: &Path, name: &str) -> String {
    let keys_new = run(
        dangan([
            "keys".as_ref(),
            "new".as_ref(),
            "--role".as_ref(),
            role.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]),
        logs,
        name,
    )
    .expect_ok(&format!("keys new --role {role}"));
    keys_new.stdout.trim().to_owned()
}
