//! guest-exec's Linux implementation on real processes: arguments, stdin, exit
//! codes and signals, capture modes, truncation with bounded memory, a child that
//! never ends, reaping (no zombies), descriptors and process group of the child,
//! and the finished-table bound.

mod common;

use std::time::{Duration, Instant};

use qga_ops::{
    CaptureMode, ExecLimits, ExecRequest, ExecStatus, LinuxProcesses, Processes, Termination,
    MAX_OUTPUT,
};

fn req(path: &str, args: &[&str], capture: CaptureMode) -> ExecRequest {
    ExecRequest {
        path: path.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: None,
        input: None,
        capture,
    }
}

/// Polls until the process is reported ended (at most 10 s).
fn wait(p: &LinuxProcesses, pid: i64) -> ExecStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = p.status(pid).unwrap();
        if s.ended.is_some() {
            return s;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not end");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run(p: &LinuxProcesses, r: &ExecRequest) -> ExecStatus {
    let pid = p.spawn(r).unwrap();
    assert!(pid > 0);
    wait(p, pid)
}

fn out(s: &ExecStatus) -> &[u8] {
    &s.stdout.as_ref().expect("stdout captured").data
}

fn err(s: &ExecStatus) -> &[u8] {
    &s.stderr.as_ref().expect("stderr captured").data
}

#[test]
fn echo_with_arguments_like_test_qga() {
    let p = LinuxProcesses::default();
    let s = run(
        &p,
        &req("echo", &["-n", "\" test_str \""], CaptureMode::Separated),
    );
    assert_eq!(s.ended, Some(Termination::Exited(0)));
    assert_eq!(out(&s), b"\" test_str \"");
    assert_eq!(out(&s).len(), 12);
    assert!(!s.stdout.as_ref().unwrap().truncated);
    assert_eq!(err(&s), b"");
    // Reported once: the entry is gone.
    let pid = p.spawn(&req("/bin/true", &[], CaptureMode::None)).unwrap();
    wait(&p, pid);
    assert_eq!(
        p.status(pid).unwrap_err().to_string(),
        "Invalid parameter 'pid'"
    );
    assert_eq!(p.tracked(), 0);
}

#[test]
fn stdin_gets_the_input_then_eof() {
    let p = LinuxProcesses::default();
    let mut r = req("/bin/cat", &[], CaptureMode::Stdout);
    r.input = Some(b"hello\0world".to_vec());
    let s = run(&p, &r);
    assert_eq!(s.ended, Some(Termination::Exited(0)));
    assert_eq!(out(&s), b"hello\0world");
    assert_eq!(s.stderr, None, "stderr not captured in stdout mode");
    // More than a pipe holds: the writer must not block the caller or deadlock
    // against the reader.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    r.input = Some(big.clone());
    let s = run(&p, &r);
    assert_eq!(out(&s), big.as_slice());
    // Without input stdin is /dev/null: cat ends at once.
    let s = run(&p, &req("/bin/cat", &[], CaptureMode::Stdout));
    assert_eq!(s.ended, Some(Termination::Exited(0)));
    assert_eq!(out(&s), b"");
}

#[test]
fn a_child_that_does_not_read_its_input_still_ends() {
    let p = LinuxProcesses::default();
    let mut r = req("/bin/true", &[], CaptureMode::None);
    r.input = Some(vec![b'x'; 1 << 20]);
    let s = run(&p, &r);
    assert_eq!(s.ended, Some(Termination::Exited(0)));
}

#[test]
fn exit_codes_and_signals() {
    let p = LinuxProcesses::default();
    let s = run(&p, &req("/bin/sh", &["-c", "exit 3"], CaptureMode::None));
    assert_eq!(s.ended, Some(Termination::Exited(3)));
    assert_eq!((s.stdout, s.stderr), (None, None));
    let s = run(
        &p,
        &req(
            "/bin/sh",
            &["-c", "echo o; echo e >&2; kill -TERM $$"],
            CaptureMode::Separated,
        ),
    );
    assert_eq!(s.ended, Some(Termination::Signaled(libc::SIGTERM)));
    assert_eq!((out(&s), err(&s)), (&b"o\n"[..], &b"e\n"[..]));
    // Killed from outside.
    let pid = p
        .spawn(&req("/bin/sleep", &["100"], CaptureMode::None))
        .unwrap();
    // SAFETY: signalling the child we just started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert_eq!(wait(&p, pid).ended, Some(Termination::Signaled(9)));
}

#[test]
fn separated_and_merged_capture() {
    let p = LinuxProcesses::default();
    let script = ["-c", "echo a; echo b >&2; echo c"];
    let s = run(&p, &req("/bin/sh", &script, CaptureMode::Separated));
    assert_eq!((out(&s), err(&s)), (&b"a\nc\n"[..], &b"b\n"[..]));
    let s = run(&p, &req("/bin/sh", &script, CaptureMode::Merged));
    assert_eq!(out(&s), b"a\nb\nc\n");
    assert_eq!(s.stderr, None);
    let s = run(&p, &req("/bin/sh", &script, CaptureMode::Stderr));
    assert_eq!((s.stdout.as_ref(), err(&s)), (None, &b"b\n"[..]));
    let s = run(&p, &req("/bin/sh", &script, CaptureMode::None));
    assert_eq!((s.stdout, s.stderr), (None, None));
}

#[test]
fn env_replaces_the_environment_verbatim() {
    let p = LinuxProcesses::default();
    let mut r = req("/usr/bin/env", &[], CaptureMode::Stdout);
    r.env = Some(vec!["A=1".into(), "B=x=y".into()]);
    assert_eq!(out(&run(&p, &r)), b"A=1\nB=x=y\n");
    r.env = Some(vec![]);
    assert_eq!(out(&run(&p, &r)), b"");
    // A bare name is still found through the agent's PATH.
    r.path = "env".into();
    r.env = Some(vec!["ONLY=this".into()]);
    assert_eq!(out(&run(&p, &r)), b"ONLY=this\n");
    // Without env the agent's environment is inherited.
    std::env::var("PATH").unwrap();
    r.env = None;
    let all = String::from_utf8(out(&run(&p, &r)).to_vec()).unwrap();
    assert!(all.lines().any(|l| l.starts_with("PATH=")), "{all}");
}

#[test]
fn spawn_failures_have_the_reference_text() {
    let p = LinuxProcesses::default();
    let e = |path: &str| {
        p.spawn(&req(path, &[], CaptureMode::Separated))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        e("/bin/x"),
        "Guest agent command failed, error was 'Failed to execute child process “/bin/x” (No such file or directory)'"
    );
    assert_eq!(
        e("no-such-program-qga"),
        "Guest agent command failed, error was 'Failed to execute child process “no-such-program-qga” (No such file or directory)'"
    );
    assert_eq!(
        e("/tmp"),
        "Guest agent command failed, error was 'Failed to execute child process “/tmp” (Permission denied)'"
    );
    assert_eq!(
        e(""),
        "Guest agent command failed, error was 'Failed to execute child process “” (No such file or directory)'"
    );
    // Nothing was left behind.
    assert_eq!(p.tracked(), 0);
}

#[test]
fn a_script_without_an_interpreter_line_runs_with_bin_sh() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("no-shebang");
    common::write_script(&script, "echo \"$0|$1|$2\"; exit 7\n");
    let p = LinuxProcesses::default();
    let path = script.to_str().unwrap();
    let s = run(&p, &req(path, &["a b", "c"], CaptureMode::Separated));
    // As GLib runs it: /bin/sh FILE ARGS..., so $0 is the file.
    assert_eq!(s.ended, Some(Termination::Exited(7)));
    assert_eq!(out(&s), format!("{path}|a b|c\n").as_bytes());
    // A file that is not executable is still refused, not handed to the shell.
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = p
        .spawn(&req(path, &[], CaptureMode::Separated))
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("(Permission denied)'"), "{e}");
}

#[test]
fn output_past_the_limit_is_drained_and_dropped() {
    let p = LinuxProcesses::new(ExecLimits {
        max_output: 10,
        ..Default::default()
    });
    let s = run(
        &p,
        &req(
            "/usr/bin/printf",
            &["0123456789abc"],
            CaptureMode::Separated,
        ),
    );
    let c = s.stdout.unwrap();
    assert_eq!((c.data.as_slice(), c.truncated), (&b"0123456789"[..], true));
    let s = run(
        &p,
        &req("/usr/bin/printf", &["0123456789"], CaptureMode::Separated),
    );
    let c = s.stdout.unwrap();
    assert_eq!(
        (c.data.as_slice(), c.truncated),
        (&b"0123456789"[..], false)
    );
    assert_eq!(p.held_bytes(), 0);
}

#[test]
fn a_100_mib_flood_keeps_memory_bounded() {
    let p = LinuxProcesses::default();
    let pid = p
        .spawn(&req(
            "/bin/sh",
            &["-c", "head -c 104857600 /dev/zero; echo done >&2"],
            CaptureMode::Separated,
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    let s = loop {
        most = most.max(p.held_bytes());
        let s = p.status(pid).unwrap();
        if s.ended.is_some() {
            break s;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    };
    // Both buffers together: stdout at its limit, stderr a few bytes' worth.
    assert!(most <= MAX_OUTPUT + 64 * 1024, "held {most} bytes");
    assert_eq!(s.ended, Some(Termination::Exited(0)));
    let o = s.stdout.unwrap();
    assert_eq!(o.data.len(), MAX_OUTPUT);
    assert!(o.data.capacity() <= MAX_OUTPUT);
    assert!(o.truncated);
    let e = s.stderr.unwrap();
    assert_eq!((e.data.as_slice(), e.truncated), (&b"done\n"[..], false));
    assert_eq!(p.held_bytes(), 0);
}

#[test]
fn a_running_child_is_reported_running_at_once() {
    let p = LinuxProcesses::default();
    let pid = p
        .spawn(&req("/bin/sleep", &["1000"], CaptureMode::Separated))
        .unwrap();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(p.status(pid).unwrap(), ExecStatus::default());
        assert!(t.elapsed() < Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(
        wait(&p, pid).ended,
        Some(Termination::Signaled(libc::SIGKILL))
    );
}

#[test]
fn ended_means_reaped_and_captured_streams_closed() {
    // As qemu-ga: a background grandchild holding stdout keeps the job running
    // after the child itself exited.
    let p = LinuxProcesses::default();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let script = format!("sleep 1000 & echo $! > {}; echo parent", pidfile.display());
    let pid = p
        .spawn(&req("/bin/sh", &["-c", &script], CaptureMode::Stdout))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bg: i32 = loop {
        if let Some(n) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break n;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    };
    // The shell exits (and is reaped: no zombie), the pipe stays open.
    wait_gone(pid);
    assert_eq!(p.status(pid).unwrap(), ExecStatus::default());
    // SAFETY: signalling the grandchild our child started.
    unsafe { libc::kill(bg, libc::SIGKILL) };
    let s = wait(&p, pid);
    assert_eq!(s.ended, Some(Termination::Exited(0)));
    assert_eq!(out(&s), b"parent\n");
}

/// Whether `pid` is a zombie child of this process.
fn our_zombie(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name: state, ppid.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let mut f = rest.split(' ');
    let (state, ppid) = (f.next().unwrap(), f.next().unwrap());
    state == "Z" && ppid == std::process::id().to_string()
}

/// Waits until `pid` is no process of ours at all (exited and reaped).
fn wait_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(1) == Some(&std::process::id().to_string())
            })
            .unwrap_or(false);
        if !ours {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} still around");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_thousand_quick_children_leave_no_zombie() {
    let p = LinuxProcesses::default();
    let pids: Vec<i64> = (0..1000)
        .map(|_| p.spawn(&req("/bin/true", &[], CaptureMode::None)).unwrap())
        .collect();
    for &pid in &pids {
        assert_eq!(wait(&p, pid).ended, Some(Termination::Exited(0)));
    }
    assert_eq!(p.tracked(), 0);
    // Reaped, not just reported: none is left a zombie (a pid reused meanwhile by
    // another test's child is not a zombie of ours for long).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies: Vec<i64> = pids.iter().copied().filter(|&p| our_zombie(p)).collect();
        if zombies.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies: {zombies:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_child_gets_only_stdio_and_its_own_process_group() {
    let p = LinuxProcesses::default();
    // ls's own directory descriptor is 3; nothing of ours (pipes, inherited fds).
    let s = run(
        &p,
        &req("/bin/ls", &["/proc/self/fd"], CaptureMode::Separated),
    );
    assert_eq!(out(&s), b"0\n1\n2\n3\n");
    // pgid (field 5 of stat) is the child's own pid.
    let s = run(
        &p,
        &req(
            "/bin/sh",
            &["-c", "read a b c d e f < /proc/$$/stat; echo $a $e"],
            CaptureMode::Stdout,
        ),
    );
    let text = String::from_utf8(out(&s).to_vec()).unwrap();
    let v: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(v[0], v[1], "pid and pgid: {text}");
    // SIGPIPE is back at its default: `yes | head` ends by it, not by an error.
    let s = run(
        &p,
        &req(
            "/bin/sh",
            &["-c", "yes | head -c 1 >/dev/null; exit 0"],
            CaptureMode::Stderr,
        ),
    );
    assert_eq!(err(&s), b"", "yes complained about a write error");
}

#[test]
fn finished_entries_past_the_count_bound_are_dropped_oldest_first() {
    let p = LinuxProcesses::new(ExecLimits {
        max_finished: 3,
        ..Default::default()
    });
    let mut pids = Vec::new();
    for i in 0..5 {
        pids.push(
            p.spawn(&req(
                "/bin/sh",
                &["-c", &format!("exit {i}")],
                CaptureMode::None,
            ))
            .unwrap(),
        );
        // Finish one at a time, so "oldest" is well defined.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.finished() != (i + 1).min(3) || p.tracked() != (i + 1).min(3) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for &pid in &pids[..2] {
        assert_eq!(
            p.status(pid).unwrap_err().to_string(),
            "Invalid parameter 'pid'"
        );
    }
    for (i, &pid) in pids.iter().enumerate().skip(2) {
        assert_eq!(
            p.status(pid).unwrap().ended,
            Some(Termination::Exited(i as i32))
        );
    }
    assert_eq!((p.tracked(), p.finished()), (0, 0));
}

#[test]
fn finished_entries_past_the_byte_bound_are_dropped_oldest_first() {
    let p = LinuxProcesses::new(ExecLimits {
        max_output: 1000,
        max_finished_bytes: 1500,
        ..Default::default()
    });
    let spawn_finished = |expect_tracked: usize| {
        let pid = p
            .spawn(&req(
                "/usr/bin/head",
                &["-c", "600", "/dev/zero"],
                CaptureMode::Stdout,
            ))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.finished() != 1 || p.tracked() != expect_tracked {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        pid
    };
    let a = spawn_finished(1);
    assert_eq!(p.held_bytes(), 1000, "a buffer grows to the limit at most");
    let b = spawn_finished(1);
    assert_eq!(p.held_bytes(), 1000, "the first one was dropped");
    assert_eq!(
        p.status(a).unwrap_err().to_string(),
        "Invalid parameter 'pid'"
    );
    let s = p.status(b).unwrap();
    assert_eq!(out(&s), vec![0u8; 600].as_slice());
    assert_eq!(p.held_bytes(), 0);
}

#[test]
fn unknown_pids() {
    let p = LinuxProcesses::default();
    for pid in [0, -1, 1, i64::MAX, std::process::id().into()] {
        assert_eq!(
            p.status(pid).unwrap_err().to_string(),
            "Invalid parameter 'pid'"
        );
    }
}
