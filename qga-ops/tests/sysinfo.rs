//! System information: the real parsers over fixture files copied from a machine,
//! os-release quoting, utmp records built here, and a differential check against
//! the reference agent when it is installed.

use std::path::PathBuf;

use qga_ops::{LinuxSystemInfo, SystemInfo};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysinfo")
}

#[test]
fn test_qga_os_release_gives_the_listed_values() {
    let info = LinuxSystemInfo {
        os_release: Some(fixtures().join("test-qga-os-release")),
        ..Default::default()
    };
    let os = info.os_info().unwrap();
    assert_eq!(os.id.as_deref(), Some("qemu-ga-test"));
    assert_eq!(os.name.as_deref(), Some("QEMU-GA"));
    assert_eq!(os.pretty_name.as_deref(), Some("QEMU Guest Agent test"));
    assert_eq!(os.version.as_deref(), Some("Test 1"));
    assert_eq!(os.version_id.as_deref(), Some("1"));
    assert_eq!(
        os.variant.as_deref(),
        Some("Unit test \"'$`\\ and \\\\ etc.")
    );
    assert_eq!(os.variant_id.as_deref(), Some("unit-test"));
}
