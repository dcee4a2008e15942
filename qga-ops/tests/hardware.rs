//! vCPUs and memory blocks: the Linux implementation over copies of fixture trees
//! captured from this machine (every write goes to a temporary directory, never
//! to /sys), the fake, and a differential check of the read side against
//! /usr/sbin/qemu-ga on this machine's real /sys.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use qga_ops::fake::FakeHardware;
use qga_ops::{
    Hardware, LinuxHardware, MemoryBlock, MemoryBlockRequest, MemoryBlockResponse,
    MemoryBlockResult, OpsError, Vcpu, VcpuRequest,
};

const ENOENT: i64 = 2;
const EISDIR: i64 = 21;
const ENOSPC: i64 = 28;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hardware")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A private copy of the fixture tree and a `LinuxHardware` pointing into it.
fn sandbox() -> (tempfile::TempDir, LinuxHardware) {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), dir.path());
    let hw = LinuxHardware {
        sys_cpu: dir.path().join("cpu"),
        sys_memory: dir.path().join("memory"),
    };
    // Belt and braces: nothing in this file may point at the real sysfs.
    assert!(!hw.sys_cpu.starts_with("/sys") && !hw.sys_memory.starts_with("/sys"));
    (dir, hw)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Sets a file's mtime to a fixed past instant, so a later write shows.
fn age(path: &Path) -> SystemTime {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
    t
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn vcpu(logical_id: i64, online: bool, can_offline: bool) -> Vcpu {
    Vcpu {
        logical_id,
        online,
        can_offline,
    }
}

fn block(phys_index: u64, online: bool, can_offline: bool) -> MemoryBlock {
    MemoryBlock {
        phys_index,
        online,
        can_offline,
    }
}

fn req(logical_id: i64, online: bool) -> VcpuRequest {
    VcpuRequest { logical_id, online }
}

fn mreq(phys_index: u64, online: bool) -> MemoryBlockRequest {
    MemoryBlockRequest { phys_index, online }
}

fn resp(
    phys_index: u64,
    response: MemoryBlockResult,
    error_code: Option<i64>,
) -> MemoryBlockResponse {
    MemoryBlockResponse {
        phys_index,
        response,
        error_code,
    }
}

fn err_text<T: std::fmt::Debug>(r: Result<T, OpsError>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------- vCPUs, read

#[test]
fn vcpus_come_from_cpu_n_entries_only() {
    let (_dir, hw) = sandbox();
    let mut got = hw.vcpus().unwrap();
    // The order is the directory's (readdir) order, as 7.2; a tmpfs/ext4 copy
    // orders differently from sysfs, so compare sorted here (the differential
    // test below compares the order on the real sysfs).
    got.sort_by_key(|v| v.logical_id);
    assert_eq!(
        got,
        [
            vcpu(0, true, false), // no `online` file
            vcpu(1, true, true),  // "1"
            vcpu(2, false, true), // "0"
        ]
    );
}

#[test]
fn vcpu_read_errors_have_7_2_texts() {
    let (dir, hw) = sandbox();
    let cpu = hw.sys_cpu.display().to_string();
    std::fs::write(dir.path().join("cpu/cpu1/online"), "").unwrap();
    assert_eq!(
        err_text(hw.vcpus()),
        format!("pread(\"{cpu}/cpu1//online\"): unexpected EOF")
    );
    std::fs::remove_file(dir.path().join("cpu/cpu1/online")).unwrap();
    std::fs::create_dir(dir.path().join("cpu/cpu1/online")).unwrap();
    assert_eq!(
        err_text(hw.vcpus()),
        format!("pread(\"{cpu}/cpu1//online\"): Is a directory")
    );

    let missing = LinuxHardware {
        sys_cpu: dir.path().join("nocpu"),
        ..hw.clone()
    };
    assert_eq!(
        err_text(missing.vcpus()),
        format!(
            "failed to list entries: {}: No such file or directory",
            missing.sys_cpu.display()
        )
    );
    // 7.2 asserts (and dies) on a guest without vCPUs; here it is an error.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let empty = LinuxHardware {
        sys_cpu: dir.path().join("empty"),
        ..hw
    };
    assert!(empty.vcpus().is_err());
}

// --------------------------------------------------------------- vCPUs, write

#[test]
fn set_vcpus_writes_one_byte_and_only_on_change() {
    let (dir, hw) = sandbox();
    let cpu1 = dir.path().join("cpu/cpu1/online");
    let cpu2 = dir.path().join("cpu/cpu2/online");

    assert_eq!(hw.set_vcpus(&[req(2, true), req(1, false)]).unwrap(), 2);
    // pwrite of one byte at offset 0: the newline stays.
    assert_eq!(read(&cpu2), "1\n");
    assert_eq!(read(&cpu1), "0\n");
    let mut now = hw.vcpus().unwrap();
    now.sort_by_key(|v| v.logical_id);
    assert_eq!(
        now,
        [
            vcpu(0, true, false),
            vcpu(1, false, true),
            vcpu(2, true, true)
        ]
    );

    // Asking for the current state writes nothing.
    let t1 = age(&cpu1);
    let t2 = age(&cpu2);
    assert_eq!(hw.set_vcpus(&[req(1, false), req(2, true)]).unwrap(), 2);
    assert_eq!((mtime(&cpu1), mtime(&cpu2)), (t1, t2));

    // No `online` file: re-onlining "succeeds" without a write.
    assert_eq!(hw.set_vcpus(&[req(0, true)]).unwrap(), 1);
    assert!(!dir.path().join("cpu/cpu0/online").exists());
    assert_eq!(hw.set_vcpus(&[]).unwrap(), 0);
}

#[test]
fn set_vcpus_stops_at_the_first_failure_and_errors_only_if_it_is_the_first() {
    let (dir, hw) = sandbox();
    let cpu = hw.sys_cpu.display().to_string();
    let cpu1 = dir.path().join("cpu/cpu1/online");
    let cpu2 = dir.path().join("cpu/cpu2/online");

    // Second fails: the count of the prefix, and nothing after it is touched.
    assert_eq!(
        hw.set_vcpus(&[req(1, false), req(0, false), req(2, true)])
            .unwrap(),
        1
    );
    assert_eq!(read(&cpu1), "0\n");
    assert_eq!(read(&cpu2), "0\n");

    // First fails: the error, and nothing is touched.
    assert_eq!(
        err_text(hw.set_vcpus(&[req(0, false), req(1, true)])),
        "logical processor #0 can't be offlined"
    );
    assert_eq!(read(&cpu1), "0\n");
    assert_eq!(
        err_text(hw.set_vcpus(&[req(99, true)])),
        format!("open(\"{cpu}/cpu99/\"): No such file or directory")
    );
    assert_eq!(
        err_text(hw.set_vcpus(&[req(-1, true)])),
        format!("open(\"{cpu}/cpu-1/\"): No such file or directory")
    );
    std::fs::write(&cpu2, "").unwrap();
    assert_eq!(
        err_text(hw.set_vcpus(&[req(2, true)])),
        format!("pread(\"{cpu}/cpu2//online\"): unexpected EOF")
    );
    // A write that fails: /dev/full reads as NUL bytes (not '0', so "online")
    // and refuses writes with ENOSPC.
    std::fs::remove_file(&cpu2).unwrap();
    std::os::unix::fs::symlink("/dev/full", &cpu2).unwrap();
    assert_eq!(
        err_text(hw.set_vcpus(&[req(2, false)])),
        format!("pwrite(\"{cpu}/cpu2//online\"): No space left on device")
    );
    assert_eq!(hw.set_vcpus(&[req(1, true), req(2, false)]).unwrap(), 1);
    assert_eq!(read(&cpu1), "1\n");
}

// -------------------------------------------------------- memory blocks, read

#[test]
fn memory_blocks_from_memory_n_directories() {
    let (dir, hw) = sandbox();
    // A plain file named like a block is no block (7.2 checks d_type).
    std::fs::write(dir.path().join("memory/memory77"), "").unwrap();
    let mut got = hw.memory_blocks().unwrap();
    got.sort_by_key(|b| b.phys_index);
    assert_eq!(
        got,
        [
            block(0, true, true),
            block(1, true, true),
            block(32, true, true),
            block(40, false, false), // offline, removable 0
            block(41, true, false),  // no `removable`
            block(42, true, false),  // no `state`
        ]
    );
    assert_eq!(hw.memory_block_size().unwrap(), 0x800_0000);
}

#[test]
fn memory_read_errors_and_a_missing_directory() {
    let (dir, hw) = sandbox();
    let mem = hw.sys_memory.display().to_string();
    // No memory directory at all: an empty list (7.2), but no block size.
    let none = LinuxHardware {
        sys_memory: dir.path().join("nomem"),
        ..hw.clone()
    };
    assert_eq!(none.memory_blocks().unwrap(), []);
    assert_eq!(
        err_text(none.memory_block_size()),
        format!(
            "open(\"{}/\"): No such file or directory",
            none.sys_memory.display()
        )
    );
    // A memory directory without blocks.
    std::fs::create_dir(dir.path().join("emptymem")).unwrap();
    let empty = LinuxHardware {
        sys_memory: dir.path().join("emptymem"),
        ..hw.clone()
    };
    assert_eq!(
        err_text(empty.memory_blocks()),
        "guest reported zero memory blocks!"
    );
    assert_eq!(
        err_text(empty.memory_block_size()),
        "open sysfs file \"block_size_bytes\": No such file or directory"
    );

    std::fs::write(format!("{mem}/block_size_bytes"), "").unwrap();
    assert_eq!(
        err_text(hw.memory_block_size()),
        "pread sysfs file \"block_size_bytes\": unexpected EOF"
    );
    std::fs::write(format!("{mem}/block_size_bytes"), "0x40000000\n").unwrap();
    assert_eq!(hw.memory_block_size().unwrap(), 1 << 30);

    std::fs::remove_file(format!("{mem}/memory41/state")).unwrap();
    std::fs::create_dir(format!("{mem}/memory41/state")).unwrap();
    assert_eq!(
        err_text(hw.memory_blocks()),
        "pread sysfs file \"state\": Is a directory"
    );
    std::fs::remove_dir(format!("{mem}/memory41/state")).unwrap();
    std::fs::write(format!("{mem}/memory41/state"), "online\n").unwrap();
    std::fs::write(format!("{mem}/memory41/removable"), "").unwrap();
    assert_eq!(
        err_text(hw.memory_blocks()),
        "pread sysfs file \"removable\": unexpected EOF"
    );
}

// ------------------------------------------------------- memory blocks, write

#[test]
fn set_memory_blocks_answers_each_request() {
    let (dir, hw) = sandbox();
    let state = |i: u32| dir.path().join(format!("memory/memory{i}/state"));
    let t0 = age(&state(0));

    let got = hw
        .set_memory_blocks(&[
            mreq(40, true),
            mreq(1, false),
            mreq(0, true),
            mreq(99, true),
            mreq(42, false),
            mreq(42, true),
        ])
        .unwrap();
    assert_eq!(
        got,
        [
            resp(40, MemoryBlockResult::Success, None),
            resp(1, MemoryBlockResult::Success, None),
            // Already online: no write.
            resp(0, MemoryBlockResult::Success, None),
            resp(99, MemoryBlockResult::NotFound, Some(ENOENT)),
            // No `state` file: offlining is not supported...
            resp(42, MemoryBlockResult::OperationNotSupported, Some(ENOENT)),
            // ...and onlining "succeeds" with ENOENT as its error code (7.2).
            resp(42, MemoryBlockResult::Success, Some(ENOENT)),
        ]
    );
    // pwrite of the word at offset 0, no truncation (as qemu-ga; sysfs takes
    // the write as a whole): "offline\n" becomes "onlinee\n".
    assert_eq!(read(state(40)), "onlinee\n");
    assert_eq!(read(state(1)), "offline");
    assert_eq!(mtime(&state(0)), t0);
    assert!(!state(42).exists());
    let mut now = hw.memory_blocks().unwrap();
    now.sort_by_key(|b| b.phys_index);
    assert_eq!(
        (now[1], now[3]),
        (block(1, false, true), block(40, true, false))
    );
}

#[test]
fn set_memory_blocks_failures_carry_the_errno() {
    let (dir, hw) = sandbox();
    let mem = dir.path().join("memory");
    // `state` unreadable (a directory): operation-failed, EISDIR.
    std::fs::remove_file(mem.join("memory41/state")).unwrap();
    std::fs::create_dir(mem.join("memory41/state")).unwrap();
    // `state` empty: operation-failed with errno 0, as 7.2 (its read set no errno).
    std::fs::write(mem.join("memory32/state"), "").unwrap();
    // The write fails: /dev/full reads as zeros (not "online"), writes ENOSPC.
    std::fs::remove_file(mem.join("memory40/state")).unwrap();
    std::os::unix::fs::symlink("/dev/full", mem.join("memory40/state")).unwrap();
    // `memory1` is a file, not a directory: operation-failed, ENOTDIR.
    std::fs::remove_dir_all(mem.join("memory1")).unwrap();
    std::fs::write(mem.join("memory1"), "").unwrap();

    let got = hw
        .set_memory_blocks(&[
            mreq(41, true),
            mreq(32, false),
            mreq(40, true),
            mreq(1, true),
        ])
        .unwrap();
    assert_eq!(
        got,
        [
            resp(41, MemoryBlockResult::OperationFailed, Some(EISDIR)),
            resp(32, MemoryBlockResult::OperationFailed, Some(0)),
            resp(40, MemoryBlockResult::OperationFailed, Some(ENOSPC)),
            resp(1, MemoryBlockResult::OperationFailed, Some(20)),
        ]
    );

    // No memory directory at all: every request is operation-not-supported.
    let none = LinuxHardware {
        sys_memory: dir.path().join("nomem"),
        ..hw
    };
    assert_eq!(
        none.set_memory_blocks(&[mreq(0, true), mreq(5, false)])
            .unwrap(),
        [
            resp(0, MemoryBlockResult::OperationNotSupported, Some(ENOENT)),
            resp(5, MemoryBlockResult::OperationNotSupported, Some(ENOENT)),
        ]
    );
    assert_eq!(none.set_memory_blocks(&[]).unwrap(), []);
}

// ------------------------------------------------------------------------ fake

#[test]
fn fake_hardware_set_methods_change_its_state() {
    let hw = FakeHardware::default();
    assert_eq!(
        hw.vcpus().unwrap(),
        [vcpu(0, true, false), vcpu(1, true, true)]
    );
    assert_eq!(
        hw.set_vcpus(&[req(1, false), req(0, false), req(1, true)])
            .unwrap(),
        1
    );
    assert_eq!(hw.vcpus().unwrap()[1], vcpu(1, false, true));
    assert_eq!(
        err_text(hw.set_vcpus(&[req(0, false)])),
        "logical processor #0 can't be offlined"
    );
    assert_eq!(
        err_text(hw.set_vcpus(&[req(7, true)])),
        "open(\"/sys/devices/system/cpu/cpu7/\"): No such file or directory"
    );
    assert_eq!(hw.set_vcpus(&[req(1, true)]).unwrap(), 1);
    assert!(hw.vcpus().unwrap()[1].online);

    assert_eq!(
        hw.set_memory_blocks(&[mreq(1, false), mreq(0, false), mreq(9, true)])
            .unwrap(),
        [
            resp(1, MemoryBlockResult::Success, None),
            resp(0, MemoryBlockResult::OperationFailed, Some(16)),
            resp(9, MemoryBlockResult::NotFound, Some(ENOENT)),
        ]
    );
    assert_eq!(
        hw.memory_blocks().unwrap(),
        [block(0, true, false), block(1, false, true)]
    );
    assert_eq!(hw.memory_block_size().unwrap(), 128 << 20);

    hw.fail_next.set(OpsError::failed("boom"));
    assert_eq!(err_text(hw.set_vcpus(&[req(1, false)])), "boom");
    // The failed call changed nothing, and the failure was used up.
    assert!(hw.vcpus().unwrap()[1].online);
    hw.fail_next.set(OpsError::failed("boom"));
    assert_eq!(err_text(hw.memory_block_size()), "boom");
    assert!(hw.memory_block_size().is_ok());
}

#[test]
fn fake_ops_carry_the_hardware_fake() {
    let fakes = qga_ops::fake::FakeOps::new();
    let ops = fakes.ops();
    ops.hardware.set_vcpus(&[req(1, false)]).unwrap();
    assert!(!fakes.hardware.vcpus.lock().unwrap()[1].online);
}

// ------------------------------------------------- differential vs qemu-ga 7.2

/// qemu-ga on a unix socket in a temporary directory, killed on drop.
struct RefAgent {
    child: std::process::Child,
    stream: BufReader<UnixStream>,
    _dir: tempfile::TempDir,
}

impl RefAgent {
    fn start() -> Option<RefAgent> {
        let bin = Path::new("/usr/sbin/qemu-ga");
        if !bin.exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let child = std::process::Command::new(bin)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut agent = None;
        for _ in 0..200 {
            if let Ok(s) = UnixStream::connect(&sock) {
                agent = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let mut guard = RefAgent {
            child,
            stream: BufReader::new(agent?),
            _dir: dir,
        };
        guard
            .stream
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Make sure we talk to a live agent before asking the real questions.
        assert!(guard.ask("guest-ping").contains("\"return\""));
        Some(guard)
    }

    fn ask(&mut self, command: &str) -> String {
        write!(self.stream.get_mut(), "{{\"execute\":\"{command}\"}}").unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        line
    }
}

impl Drop for RefAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The objects of a `{"return": [{...}, ...]}` reply, each as its members'
/// text (`"online": true` etc.). The replies here hold only flat objects of
/// numbers and booleans.
fn return_objects(reply: &str) -> Vec<Vec<(String, String)>> {
    let body = reply
        .split_once("\"return\":")
        .unwrap_or_else(|| panic!("not a return: {reply}"))
        .1;
    body.split('{')
        .skip(1)
        .map(|obj| {
            let obj = obj.split('}').next().unwrap();
            obj.split(',')
                .map(|m| {
                    let (k, v) = m.split_once(':').unwrap();
                    (k.trim().trim_matches('"').to_owned(), v.trim().to_owned())
                })
                .collect()
        })
        .collect()
}

fn member<'a>(obj: &'a [(String, String)], key: &str) -> &'a str {
    &obj.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn read_side_equals_qemu_ga_on_this_machine() {
    let Some(mut agent) = RefAgent::start() else {
        println!("SKIPPED: /usr/sbin/qemu-ga is not available");
        return;
    };
    let ours = LinuxHardware::default();

    // Same order too: both list the real sysfs directory in readdir order.
    let theirs: Vec<Vcpu> = return_objects(&agent.ask("guest-get-vcpus"))
        .iter()
        .map(|o| Vcpu {
            logical_id: member(o, "logical-id").parse().unwrap(),
            online: member(o, "online") == "true",
            can_offline: member(o, "can-offline") == "true",
        })
        .collect();
    assert!(!theirs.is_empty());
    assert_eq!(ours.vcpus().unwrap(), theirs);

    let reply = agent.ask("guest-get-memory-blocks");
    let theirs: Vec<MemoryBlock> = if reply.contains("\"return\"") {
        return_objects(&reply)
            .iter()
            .map(|o| MemoryBlock {
                phys_index: member(o, "phys-index").parse().unwrap(),
                online: member(o, "online") == "true",
                can_offline: member(o, "can-offline") == "true",
            })
            .collect()
    } else {
        Vec::new()
    };
    match ours.memory_blocks() {
        Ok(blocks) => assert_eq!(blocks, theirs, "qemu-ga said {reply}"),
        Err(e) => assert!(reply.contains(&e.to_string()), "{e} vs {reply}"),
    }

    let reply = agent.ask("guest-get-memory-block-info");
    match ours.memory_block_size() {
        Ok(size) => assert_eq!(
            reply.trim(),
            format!("{{\"return\": {{\"size\": {size}}}}}")
        ),
        Err(e) => assert!(reply.contains(&e.to_string()), "{e} vs {reply}"),
    }
}

// ------------------------------- write-side differential, private namespace

/// The `desc` of an error reply, or the raw `return` value text.
fn outcome(reply: &str) -> Result<String, String> {
    if let Some((_, desc)) = reply.split_once("\"desc\": \"") {
        let desc = desc.trim_end().trim_end_matches("\"}}");
        return Err(desc.replace("\\\"", "\""));
    }
    let (_, ret) = reply
        .split_once("\"return\": ")
        .unwrap_or_else(|| panic!("{reply}"));
    Ok(ret.trim_end().trim_end_matches('}').to_owned())
}

fn file_tree(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let t = entry.file_type().unwrap();
        if t.is_symlink() {
            out.push((
                rel,
                format!("-> {:?}", std::fs::read_link(entry.path()).unwrap()),
            ));
        } else if t.is_dir() {
            out.push((rel.clone(), "dir".into()));
            file_tree(root, &rel, out);
        } else if entry.file_name() != "QGA_FIXTURE_MARKER" {
            out.push((rel, read(entry.path())));
        }
    }
}

/// The same guest-set-vcpus / guest-set-memory-blocks script sent to qemu-ga 7.2
/// and to ours, each over its own copy of the fixture tree: qemu-ga runs in a
/// private mount namespace where the copy is bind-mounted over
/// /sys/devices/system/{cpu,memory}, and it is asked nothing that writes before
/// it has proved (by a block size only the copy has) that it sees the copy.
/// Replies and the files afterwards must be the same.
#[test]
fn write_side_equals_qemu_ga_over_the_same_fixture() {
    let root = tempfile::tempdir().unwrap();
    let (theirs, ours) = (root.path().join("theirs"), root.path().join("ours"));
    for tree in [&theirs, &ours] {
        copy_tree(&fixture(), tree);
        std::fs::write(tree.join("memory/block_size_bytes"), "1230000\n").unwrap();
        for d in [
            "cpu/cpu3",
            "cpu/cpu4",
            "memory/memory50",
            "memory/memory51/state",
        ] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("/dev/full", tree.join("cpu/cpu3/online")).unwrap();
        std::fs::write(tree.join("cpu/cpu4/online"), "").unwrap();
        std::os::unix::fs::symlink("/dev/full", tree.join("memory/memory50/state")).unwrap();
        std::fs::create_dir_all(tree.join("memory/memory52")).unwrap();
        std::fs::write(tree.join("memory/memory52/state"), "").unwrap();
        std::fs::write(tree.join("memory/memory53"), "").unwrap();
    }
    for d in ["cpu", "memory"] {
        std::fs::write(theirs.join(d).join("QGA_FIXTURE_MARKER"), "").unwrap();
    }
    let sock = root.path().join("sock");
    let script = "mount --bind \"$1\" /sys/devices/system/cpu && \
                  mount --bind \"$2\" /sys/devices/system/memory && \
                  test -f /sys/devices/system/cpu/QGA_FIXTURE_MARKER && \
                  test -f /sys/devices/system/memory/QGA_FIXTURE_MARKER && \
                  exec /usr/sbin/qemu-ga -m unix-listen -p \"$3\" -t \"$4\"";
    if !Path::new("/usr/sbin/qemu-ga").exists() {
        println!("SKIPPED: /usr/sbin/qemu-ga is not available");
        return;
    }
    let Ok(child) = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(theirs.join("cpu"))
        .arg(theirs.join("memory"))
        .arg(&sock)
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        println!("SKIPPED: no unshare");
        return;
    };
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(s) = UnixStream::connect(&sock) {
            stream = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(stream) = stream else {
        println!("SKIPPED: cannot bind-mount in a private namespace (not root?)");
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut agent = RefAgent {
        child,
        stream: BufReader::new(stream),
        _dir: dir,
    };
    // The proof: only the copies have this block size.
    assert_eq!(
        agent.ask("guest-get-memory-block-info").trim(),
        "{\"return\": {\"size\": 19070976}}"
    );
    let hw = LinuxHardware {
        sys_cpu: ours.join("cpu"),
        sys_memory: ours.join("memory"),
    };
    let ours_text = |e: OpsError| {
        e.to_string()
            .replace(&ours.display().to_string(), "/sys/devices/system")
    };
    let send = |agent: &mut RefAgent, cmd: &str, args: &str| {
        write!(
            agent.stream.get_mut(),
            "{{\"execute\":\"{cmd}\",\"arguments\":{args}}}"
        )
        .unwrap();
        let mut line = String::new();
        agent.stream.read_line(&mut line).unwrap();
        line
    };

    let vcpu_scripts: &[&[(i64, bool)]] = &[
        &[(2, true), (1, false)],
        &[(1, false), (2, true)],
        &[(0, true)],
        &[],
        &[(1, true), (0, false), (2, false)],
        &[(0, false), (1, true)],
        &[(99, true)],
        &[(3, false)],
        &[(1, false), (3, false)],
        &[(4, true)],
        &[(3, true), (2, true)],
    ];
    for s in vcpu_scripts {
        let args: Vec<String> = s
            .iter()
            .map(|(id, on)| format!("{{\"logical-id\":{id},\"online\":{on}}}"))
            .collect();
        let reply = send(
            &mut agent,
            "guest-set-vcpus",
            &format!("{{\"vcpus\":[{}]}}", args.join(",")),
        );
        let reqs: Vec<VcpuRequest> = s.iter().map(|(id, on)| req(*id, *on)).collect();
        let mine = hw
            .set_vcpus(&reqs)
            .map(|n| n.to_string())
            .map_err(ours_text);
        assert_eq!(mine, outcome(&reply), "script {s:?}");
    }

    let blocks: &[(u64, bool)] = &[
        (40, true),
        (1, false),
        (0, true),
        (99999, true),
        (42, false),
        (42, true),
        (50, true),
        (51, true),
        (52, false),
        (53, true),
        (41, false),
    ];
    let args: Vec<String> = blocks
        .iter()
        .map(|(i, on)| format!("{{\"phys-index\":{i},\"online\":{on}}}"))
        .collect();
    let reply = send(
        &mut agent,
        "guest-set-memory-blocks",
        &format!("{{\"mem-blks\":[{}]}}", args.join(",")),
    );
    let theirs_resp: Vec<MemoryBlockResponse> = return_objects(&reply)
        .iter()
        .map(|o| MemoryBlockResponse {
            phys_index: member(o, "phys-index").parse().unwrap(),
            response: match member(o, "response") {
                "\"success\"" => MemoryBlockResult::Success,
                "\"not-found\"" => MemoryBlockResult::NotFound,
                "\"operation-not-supported\"" => MemoryBlockResult::OperationNotSupported,
                "\"operation-failed\"" => MemoryBlockResult::OperationFailed,
                other => panic!("{other}"),
            },
            error_code: o
                .iter()
                .find(|(k, _)| k == "error-code")
                .map(|(_, v)| v.parse().unwrap()),
        })
        .collect();
    let reqs: Vec<MemoryBlockRequest> = blocks.iter().map(|(i, on)| mreq(*i, *on)).collect();
    assert_eq!(
        hw.set_memory_blocks(&reqs).unwrap(),
        theirs_resp,
        "qemu-ga: {reply}"
    );

    // The read side over the changed trees (errors included).
    for cmd in ["guest-get-vcpus", "guest-get-memory-blocks"] {
        let reply = agent.ask(cmd);
        let mine = if cmd == "guest-get-vcpus" {
            hw.vcpus().map(|_| ()).map_err(ours_text)
        } else {
            hw.memory_blocks().map(|_| ()).map_err(ours_text)
        };
        match (mine, outcome(&reply)) {
            (Err(a), Err(b)) => assert_eq!(a, b, "{cmd}"),
            (a, b) => panic!("{cmd}: ours {a:?}, qemu-ga {b:?}"),
        }
    }
    drop(agent);

    let (mut a, mut b) = (Vec::new(), Vec::new());
    file_tree(&theirs, Path::new(""), &mut a);
    file_tree(&ours, Path::new(""), &mut b);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
