//! The README's configuration reference is generated from strongswan-conf/qkd.opt (which
//! src/config/tests.rs checks against the keys the plugin reads): this fails when they drift.

use std::process::Command;

#[test]
fn readme_configuration_reference_matches_qkd_opt() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/opt-to-md.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--check")
        .output()
        .expect("python3 runs scripts/opt-to-md.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
