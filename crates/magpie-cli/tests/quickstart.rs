//! The README's quickstart, run exactly as written against the freshly built `magpie`.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn quickstart_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("# magpie-quickstart")
        .expect("README has a quickstart block");
    let end = start + readme[start..].find("```").expect("the block is closed");
    readme[start..end].to_owned()
}

#[test]
fn the_readme_quickstart_works_as_written() {
    let script = quickstart_block();
    let dir = tempfile::tempdir().unwrap();
    let port = magpie_testkit::free_port();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_magpie"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The README assumes port 8080; the test moves it to a free port through the documented
    // environment variables instead of editing the script.
    let script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("MAGPIE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MAGPIE_SERVER", format!("ws://127.0.0.1:{port}"))
        .env_remove("MAGPIE_APP_SECRET")
        .env_remove("MAGPIE_USER")
        .env_remove("MAGPIE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever happened, leave no server behind.
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{pgid}")])
        .status();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status =
        status.unwrap_or_else(|| panic!("quickstart hung\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        status.success(),
        "quickstart failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect();
    let users: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("created_at").is_some())
        .collect();
    assert_eq!(users.len(), 2, "two users created: {stdout}");
    let hellos: Vec<&Value> = lines
        .iter()
        .filter(|l| l["body"]["text"] == "hello bob")
        .collect();
    assert_eq!(
        hellos.len(),
        2,
        "printed once by send and once by listen: {stdout}"
    );
    assert_eq!(hellos[0]["id"], hellos[1]["id"]);
    assert_eq!(hellos[0]["seq"], 1);
    assert_eq!(hellos[0]["conversation_id"], "c2c:alice:bob");
    assert_eq!(hellos[0]["from"], "alice");
    assert!(stderr.contains("Generated an app secret"), "{stderr}");
}
