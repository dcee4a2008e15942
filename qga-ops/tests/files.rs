//! One behavioural suite, run against the real files (in a temp dir) and the fake,
//! so the fake cannot drift from what clients observe on a real guest.

use std::path::{Path, PathBuf};

use qga_ops::fake::FakeFiles;
use qga_ops::{Files, LinuxFiles, Whence};

fn read_all(f: &mut dyn qga_ops::GuestFile, count: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let eof = f.read(count, &mut buf).unwrap();
    (buf, eof)
}

/// The reference's test-qga file-ops sequences plus every mode.
fn suite(files: &dyn Files, dir: &Path) {
    let p = |name: &str| -> PathBuf { dir.join(name) };
    let hello = b"Hello World!\n\0";

    // /qga/file-ops: write, flush, close; reopen, read twice, seek, read.
    let mut f = files.open(&p("foo"), "w+").unwrap();
    let w = f.write(hello).unwrap();
    assert_eq!((w.count, w.eof), (14, false));
    f.flush().unwrap();
    f.close().unwrap();
    let mut f = files.open(&p("foo"), "r").unwrap();
    assert_eq!(read_all(&mut *f, 4096), (hello.to_vec(), true));
    assert_eq!(read_all(&mut *f, 4096), (vec![], true));
    let s = f.seek(6, Whence::Set).unwrap();
    assert_eq!((s.position, s.eof), (6, false));
    assert_eq!(read_all(&mut *f, 4096), (hello[6..].to_vec(), true));
    // A zero-byte read reports eof false, even at the end (as qemu-ga).
    assert_eq!(read_all(&mut *f, 0), (vec![], false));
    f.seek(0, Whence::Set).unwrap();
    assert_eq!(read_all(&mut *f, 5), (hello[..5].to_vec(), false));
    // Writing to a read-only handle fails with the OS error.
    assert_eq!(
        f.write(b"x").unwrap_err().to_string(),
        "failed to write to file: Bad file descriptor"
    );
    f.close().unwrap();

    // /qga/file-write-read: read right after a write sees the position at the end.
    let mut f = files.open(&p("foo"), "w+").unwrap();
    f.write(hello).unwrap();
    assert_eq!(read_all(&mut *f, 4096), (vec![], true));
    f.seek(0, Whence::Set).unwrap();
    assert_eq!(read_all(&mut *f, 4096), (hello.to_vec(), true));
    // Seek from each origin.
    assert_eq!(f.seek(-4, Whence::End).unwrap().position, 10);
    assert_eq!(f.seek(2, Whence::Cur).unwrap().position, 12);
    assert_eq!(f.seek(100, Whence::Set).unwrap().position, 100);
    assert_eq!(
        f.seek(-1000, Whence::Cur).unwrap_err().to_string(),
        "failed to seek file: Invalid argument"
    );
    f.close().unwrap();

    // `eof` describes each call: a write after a read hit the end says false (as
    // qemu-ga), and data appended since is read, with eof false if it filled the
    // request (qemu-ga returns nothing until a seek).
    let mut f = files.open(&p("eof"), "w+").unwrap();
    f.write(b"hello").unwrap();
    f.seek(0, Whence::Set).unwrap();
    assert_eq!(read_all(&mut *f, 100), (b"hello".to_vec(), true));
    let w = f.write(b"!").unwrap();
    assert_eq!((w.count, w.eof), (1, false));
    let mut g = files.open(&p("eof"), "a").unwrap();
    g.write(b"world").unwrap();
    assert_eq!(read_all(&mut *f, 5), (b"world".to_vec(), false));
    assert_eq!(read_all(&mut *f, 5), (vec![], true));
    g.close().unwrap();
    f.close().unwrap();

    // "w" truncates, "a" appends whatever the position, "r+" keeps contents.
    let mut f = files.open(&p("foo"), "a").unwrap();
    f.write(b"tail").unwrap();
    f.close().unwrap();
    let mut f = files.open(&p("foo"), "rb").unwrap();
    let (data, _) = read_all(&mut *f, 100);
    assert_eq!(&data[..14], hello);
    assert_eq!(&data[14..], b"tail");
    f.close().unwrap();
    let mut f = files.open(&p("foo"), "r+b").unwrap();
    f.write(b"J").unwrap();
    f.seek(0, Whence::Set).unwrap();
    assert_eq!(read_all(&mut *f, 5).0, b"Jello");
    f.close().unwrap();
    let mut f = files.open(&p("foo"), "a+").unwrap();
    f.seek(0, Whence::Set).unwrap();
    assert_eq!(read_all(&mut *f, 5).0, b"Jello");
    f.write(b"!").unwrap();
    f.seek(-1, Whence::End).unwrap();
    assert_eq!(read_all(&mut *f, 5).0, b"!");
    f.close().unwrap();
    let f = files.open(&p("foo"), "wb").unwrap();
    f.close().unwrap();
    let mut f = files.open(&p("foo"), "r").unwrap();
    assert_eq!(read_all(&mut *f, 10), (vec![], true));
    // Write-only handles cannot read.
    let mut f = files.open(&p("foo"), "w").unwrap();
    assert_eq!(
        f.read(1, &mut Vec::new()).unwrap_err().to_string(),
        "failed to read file: Bad file descriptor"
    );

    // Every accepted mode opens; others are refused with the reference's text.
    files.open(&p("modes"), "w").unwrap().close().unwrap();
    for mode in [
        "r", "rb", "w", "wb", "a", "ab", "r+", "rb+", "r+b", "w+", "wb+", "w+b", "a+", "ab+", "a+b",
    ] {
        files.open(&p("modes"), mode).unwrap().close().unwrap();
    }
    for mode in ["", "x", "rw", "rb+b", "R", "r+ ", "br"] {
        assert_eq!(
            files.open(&p("modes"), mode).err().unwrap().to_string(),
            format!("invalid file open mode '{mode}'")
        );
    }

    // Missing file in read mode.
    let missing = p("missing");
    assert_eq!(
        files.open(&missing, "r").err().unwrap().to_string(),
        format!(
            "failed to open file '{}' (mode: 'r'): No such file or directory",
            missing.display()
        )
    );
}

#[test]
fn real_files_follow_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LinuxFiles, dir.path());
}

#[test]
fn fake_files_follow_the_suite() {
    suite(&FakeFiles::new(), Path::new("/virtual"));
}

#[test]
fn new_files_are_0666_whatever_the_umask_and_existing_modes_are_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new");
    LinuxFiles.open(&path, "w").unwrap().close().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    LinuxFiles.open(&path, "a").unwrap().close().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn directories_open_but_do_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = LinuxFiles.open(dir.path(), "r").unwrap();
    assert_eq!(
        f.read(10, &mut Vec::new()).unwrap_err().to_string(),
        "failed to read file: Is a directory"
    );
}

#[test]
fn large_reads_append_exactly_count_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut f = LinuxFiles.open(&path, "r").unwrap();
    let mut buf = b"prefix".to_vec();
    let eof = f.read(2_000_000, &mut buf).unwrap();
    assert!(!eof);
    assert_eq!(&buf[6..], &data[..2_000_000]);
    let mut rest = Vec::new();
    assert!(f.read(2_000_000, &mut rest).unwrap());
    assert_eq!(rest, &data[2_000_000..]);
}

#[test]
fn injected_errors_surface_once() {
    let fakes = FakeFiles::new();
    fakes.fail_open.set(qga_ops::OpsError::failed("boom"));
    assert_eq!(
        fakes.open(Path::new("/a"), "w").err().unwrap().to_string(),
        "boom"
    );
    let mut f = fakes.open(Path::new("/a"), "w").unwrap();
    fakes.fail_io.set(qga_ops::OpsError::failed("io"));
    assert_eq!(f.write(b"x").unwrap_err().to_string(), "io");
    assert_eq!(f.write(b"x").unwrap().count, 1);
}

#[test]
fn a_fifo_without_data_is_eagain_and_partial_data_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Open for reading (non-blocking, as qemu-ga), then a writer.
    let mut f = LinuxFiles.open(&fifo, "r").unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    assert_eq!(
        f.read(10, &mut Vec::new()).unwrap_err().to_string(),
        "failed to read file: Resource temporarily unavailable"
    );
    use std::io::Write;
    writer.write_all(b"abc").unwrap();
    let mut buf = Vec::new();
    let eof = f.read(10, &mut buf).unwrap();
    assert_eq!((buf.as_slice(), eof), (&b"abc"[..], false));
}
