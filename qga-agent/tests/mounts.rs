//! guest-get-fsinfo follows the mount table as it changes under a running agent.
//!
//! The agent keeps the mount table it last read and asks the kernel whether it
//! changed (qga-ops `read_mountinfo`); this test makes real mount changes and checks
//! that every answer is the table of the moment. It never touches this machine's
//! mounts: the agent runs in a private mount namespace (`unshare --mount
//! --propagation private`) and the bind mounts are made in that namespace only
//! (`nsenter --mount`), so they vanish with the agent whatever happens.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::Session;
use serde_json::json;

/// A skip that CI (QGA_REQUIRE_ROOT_TESTS=1) turns into a failure.
fn skip_root_test(why: &str) {
    if std::env::var_os("QGA_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("mount-change test cannot run: {why} (QGA_REQUIRE_ROOT_TESTS=1)");
    }
    eprintln!("SKIPPED mount-change test: {why}");
}

fn mountpoints(agent: &mut Session) -> Vec<String> {
    let r = agent.call("guest-get-fsinfo", json!({}));
    let Some(list) = r["return"].as_array() else {
        panic!("guest-get-fsinfo failed: {r}");
    };
    list.iter()
        .map(|fs| fs["mountpoint"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs `args` in the agent's mount namespace.
fn in_agent_namespace(agent: &Session, args: &[&str]) {
    let ns = format!("--mount=/proc/{}/ns/mnt", agent.pid());
    let st = Command::new("nsenter")
        .arg(&ns)
        .args(args)
        .status()
        .expect("run nsenter");
    assert!(st.success(), "nsenter {ns} {args:?}: {st}");
}

#[test]
fn fsinfo_follows_mounts_made_and_removed_while_the_agent_runs() {
    if !nix::unistd::geteuid().is_root() {
        return skip_root_test("needs root");
    }
    let private_ns = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !private_ns.is_ok_and(|s| s.success()) {
        return skip_root_test("unshare --mount does not work here");
    }
    // Bind mounts of a directory on a block device are listed (tmpfs ones are not,
    // as in qemu-ga): both directories live in the target dir, on the build disk.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("mnt point"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    if nix::sys::stat::major(std::fs::metadata(&src).unwrap().dev()) == 0 {
        return skip_root_test("the target dir is not on a block device");
    }
    let (src, dst) = (src.to_str().unwrap(), dst.to_str().unwrap());

    let mut agent = Session::start_wrapped(
        &["unshare", "--mount", "--propagation", "private"],
        env!("CARGO_BIN_EXE_qga-agent"),
    );
    let before = mountpoints(&mut agent);
    assert!(before.iter().any(|m| m == "/"), "{before:?}");
    assert!(!before.iter().any(|m| m == dst), "{before:?}");
    // Asked again with nothing changed: the same answer.
    assert_eq!(mountpoints(&mut agent), before);

    for round in 0..3 {
        in_agent_namespace(&agent, &["mount", "--bind", src, dst]);
        let mounted = mountpoints(&mut agent);
        // qemu-ga lists the newest mount first.
        assert_eq!(
            mounted.first().map(String::as_str),
            Some(dst),
            "round {round}: {mounted:?}"
        );
        assert_eq!(mounted[1..], before[..], "round {round}");
        assert_eq!(mountpoints(&mut agent), mounted, "round {round}");
        in_agent_namespace(&agent, &["umount", dst]);
        assert_eq!(mountpoints(&mut agent), before, "round {round}");
    }

    // A mount moved elsewhere: the new place shows, the old one does not.
    let moved = format!("{src}/moved");
    in_agent_namespace(&agent, &["mount", "--bind", src, dst]);
    in_agent_namespace(&agent, &["mkdir", "-p", &moved]);
    in_agent_namespace(&agent, &["mount", "--move", dst, &moved]);
    let after_move = mountpoints(&mut agent);
    assert!(after_move.contains(&moved), "{after_move:?}");
    assert!(!after_move.iter().any(|m| m == dst), "{after_move:?}");
    drop(agent);
    // The namespace went with the agent: this machine's mount table never held them.
    let name = dir.path().file_name().unwrap().to_str().unwrap();
    let mine = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mine.contains(name), "{mine}");
}
