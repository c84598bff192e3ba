//! Inputs the fuzz targets (`fuzz/`, see docs/fuzzing.md) turned up, kept so they stay
//! fixed. Each test names the target and what went wrong.

use dangan::config::{ClusterFile, ConfigError};

/// The example cluster file with another `shard_kib`.
fn cluster_with_shard_kib(shard_kib: &str) -> String {
    let example = include_str!("../../config/cluster.toml");
    assert!(example.contains("\nshard_kib = 1024\n"));
    example.replace(
        "\nshard_kib = 1024\n",
        &format!("\nshard_kib = {shard_kib}\n"),
    )
}

fn load_cluster(text: &str) -> Result<dangan::config::Cluster, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    ClusterFile::load(&path)
}

/// `config` target: `shard_kib = 2^53` made `k * target` overflow in
/// `CodingParams::with_shard_len` (a panic in debug builds; in release builds it wrapped to
/// one segment per stripe and the file was accepted with tiny shards).
#[test]
fn fuzz_config_huge_shard_kib_is_refused_not_overflowed() {
    for shard_kib in [
        "9007199254740992",     // 2^53: k * (shard_kib << 10) overflowed
        "18014398509481984",    // 2^54: shard_kib << 10 wrapped to 0
        "18446744073709551615", // u64::MAX
    ] {
        let err = load_cluster(&cluster_with_shard_kib(shard_kib)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { message, .. } if message.contains("[coding]")),
            "shard_kib = {shard_kib}: {err}"
        );
    }
    // The example itself still loads.
    load_cluster(&cluster_with_shard_kib("1024")).unwrap();
}
