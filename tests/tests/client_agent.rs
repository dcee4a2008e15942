//! qga-client against our agent and against the reference qemu-ga, over unix
//! sockets: every seed command that is safe on this machine, a dirty stream left by
//! a previous host, and multi-megabyte file get/put compared byte for byte.

use std::path::Path;

use qga_client::{connect_unix, ClientError};
use qga_proto::{ErrorClass, FsfreezeStatus, SeekOrigin};
use qga_tests::{reference_available, OurAgent, ReferenceAgent};

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn exercise(sock: &Path, dir: &Path, expect_version: Option<&str>) {
    // A previous host left half a request on the line.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.write_all(br#"{"execute":"guest-file-open","arguments":{"pa"#)
            .unwrap();
    }
    let mut c = connect_unix(sock).await.unwrap();
    c.ping().await.unwrap();
    c.sync().await.unwrap();
    let info = c.info().await.unwrap();
    if let Some(v) = expect_version {
        assert_eq!(info.version, v);
    }
    // Ours serves every command qga-proto types; 7.2 all but the newer ones.
    let ours = expect_version.is_some();
    for spec in qga_proto::COMMANDS {
        if !ours && qga_tests::NOT_IN_72.contains(&spec.name) {
            continue;
        }
        let listed = info
            .supported_commands
            .iter()
            .find(|x| x.name == spec.name)
            .unwrap_or_else(|| panic!("{} missing from guest-info", spec.name));
        // Windows only: registered but disabled on Linux, by both.
        assert_eq!(
            listed.enabled,
            spec.name != "guest-get-devices",
            "{}",
            spec.name
        );
        assert_eq!(listed.success_response, spec.success_response);
    }
    let ifs = c.network_interfaces().await.unwrap();
    let lo = ifs.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo
        .ip_addresses
        .iter()
        .flatten()
        .any(|a| a.ip_address == "127.0.0.1" && a.prefix == 8));
    assert_eq!(c.fsfreeze_status().await.unwrap(), FsfreezeStatus::Thawed);

    // Handle-level file operations.
    let path = dir.join("hello");
    let p = path.to_str().unwrap();
    let h = c.file_open(p, Some("w+")).await.unwrap();
    assert!(h >= 1000);
    assert_eq!(
        c.file_write(h, b"hello world".to_vec())
            .await
            .unwrap()
            .count,
        11
    );
    c.file_flush(h).await.unwrap();
    let s = c.file_seek(h, 6, SeekOrigin::Set).await.unwrap();
    assert_eq!(s.position, 6);
    let r = c.file_read(h, Some(100)).await.unwrap();
    assert_eq!((r.buf_b64.0.as_slice(), r.eof), (&b"world"[..], true));
    c.file_close(h).await.unwrap();
    let err = c.file_read(h, None).await.unwrap_err();
    assert_eq!(
        err.agent_error().unwrap().desc,
        format!("handle '{h}' has not been found")
    );

    // Whole files, several chunks each way.
    let big = data(5 * 1024 * 1024 + 123, 42);
    let remote = dir.join("big.bin");
    let rp = remote.to_str().unwrap();
    let mut progress = Vec::new();
    let mut cb = |done: u64, total: Option<u64>| progress.push((done, total));
    c.write_file(rp, &big, 1024 * 1024, Some(&mut cb))
        .await
        .unwrap();
    assert_eq!(
        progress.last(),
        Some(&(big.len() as u64, Some(big.len() as u64)))
    );
    assert_eq!(progress.len(), 6);
    assert!(
        std::fs::read(&remote).unwrap() == big,
        "file written intact"
    );
    let back = c.read_file(rp, 2 * 1024 * 1024, None).await.unwrap();
    assert!(back == big, "file read back intact");

    // Errors: the agent's class and text.
    let err = c
        .file_open(dir.join("missing").to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert!(err
        .agent_error()
        .unwrap()
        .desc
        .ends_with("(mode: 'r'): No such file or directory"));
    let err = c.execute_raw("guest-nonexistent", None).await.unwrap_err();
    assert!(err.is_command_not_found());
    assert_eq!(
        err.agent_error().unwrap().class,
        ErrorClass::CommandNotFound
    );
    let err = c.shutdown(Some("bogus")).await.unwrap_err();
    assert_eq!(
        err.agent_error().unwrap().desc,
        "mode is invalid (valid values are: halt|powerdown|reboot"
    );
    // Still in sync after all that.
    c.ping().await.unwrap();
    let v = c
        .execute_raw("guest-sync", Some(serde_json::json!({"id": 99})))
        .await
        .unwrap();
    assert_eq!(v, 99);
}

#[tokio::test(flavor = "current_thread")]
async fn client_drives_our_agent() {
    let agent = OurAgent::start(&[]);
    exercise(
        &agent.sock,
        agent.dir.path(),
        Some(env!("CARGO_PKG_VERSION")),
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn client_drives_the_reference_agent() {
    if !reference_available() {
        return;
    }
    let agent = ReferenceAgent::start();
    exercise(&agent.sock, agent.dir.path(), None).await;
}

#[tokio::test(flavor = "current_thread")]
async fn blocked_commands_are_command_not_found() {
    let agent = OurAgent::start(&["-b", "guest-file-open"]);
    let mut c = connect_unix(&agent.sock).await.unwrap();
    let err = c.file_open("/x", None).await.unwrap_err();
    assert!(err.is_command_not_found());
    assert_eq!(
        err.agent_error().unwrap().desc,
        "Command guest-file-open has been disabled"
    );
    assert!(matches!(err, ClientError::Agent(_)));
}
