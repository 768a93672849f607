//! A panic anywhere in the daemon ends the process (`daemon::stop_on_panic`, installed by
//! `voucherd serve`), rather than only the task or thread it happened on.
//!
//! The daemon has no input that makes it panic (that is the point of its checks), so this
//! test runs itself again as a child process that installs the same hook, panics inside a
//! tokio task as a claim handler would, and reports whether it survived.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "VOUCHERD_PANIC_TEST_CHILD";
const TEST_NAME: &str = "a_panic_in_a_request_task_stops_the_process";
const SURVIVED: &str = "still serving after a panic";
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn a_panic_in_a_request_task_stops_the_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        panic_in_a_task();
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let deadline = Instant::now() + CHILD_DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            child.kill().expect("kill");
            panic!("the child neither stopped nor finished");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(SURVIVED), "{stdout}\n{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(6),
        "stopped by SIGABRT: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("a broken invariant, for this test"),
        "{stderr}"
    );
    assert!(stderr.contains("voucherd: stopping on a panic"), "{stderr}");
}

/// The daemon's own code can be made to panic by no input, so that `serve` installs the hook
/// is checked in its source: before anything else it does, so a panic while the WAL is
/// replayed or the listeners start is covered too.
#[test]
fn serve_installs_the_hook_first() {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon.rs"),
    )
    .expect("read src/daemon.rs");
    let serve = source.split_once("pub fn serve(").expect("daemon::serve").1;
    let first_statement = serve
        .lines()
        .skip(1)
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with("//"))
        .expect("a statement");
    assert_eq!(first_statement, "stop_on_panic();");
}

/// The child: a panic in a spawned task, on a runtime like the daemon's. Without the hook
/// tokio catches it, the task's handle reports it, and the process goes on.
fn panic_in_a_task() -> ! {
    voucherd::daemon::stop_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let task = tokio::spawn(async { panic!("a broken invariant, for this test") });
        let joined = task.await;
        println!("{SURVIVED}: {}", joined.is_err());
    });
    std::process::exit(0);
}
