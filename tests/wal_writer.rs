//! `storage.writer` in the config: every accepted value runs, anything else is a
//! config error (exit 64) that lists the accepted values.

mod support;

use support::*;

#[test]
fn every_wal_writer_value_runs_and_others_are_refused() {
    for writer in ["mmap", "io_uring", "auto"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TestConfig {
            wal_writer: Some(writer),
            ..TestConfig::default()
        };
        let daemon = start(dir.path(), &config);
        daemon.create_tranche("t1", &open_tranche_body(&[(420502, 5)]));
        let (_, lng, lat) = county_points()
            .into_iter()
            .find(|(c, _, _)| *c == 420502)
            .expect("西陵区");
        let reply = daemon
            .client()
            .claim(&claim_body("t1", "writer-user", "writer-req", lng, lat));
        assert_eq!(reply.status, 201, "{writer}: {}", reply.text());
        let status = daemon.terminate();
        assert!(status.success(), "{writer}: {status:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TestConfig {
        wal_writer: Some("pwrite"),
        ..TestConfig::default()
    };
    let (code, stderr) = run_expecting_exit(&write_config(dir.path(), &config));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("unknown variant `pwrite`") && stderr.contains("`io_uring`"),
        "{stderr}"
    );
}
