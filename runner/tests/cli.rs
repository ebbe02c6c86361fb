//! The `kestrel` binary's answers to bad input: one sentence, exit 125,
//! no backtrace. Needs no KVM (validation happens before /dev/kvm is opened).

use std::process::Command;

fn kestrel(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_clear_line(args: &[&str], needle: &str) {
    let (code, stderr) = kestrel(args);
    assert_eq!(code, 125, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("kestrel: "), "{stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn bad_input_is_one_sentence_and_exit_125() {
    fn run<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--initrd", "/etc/hostname"];
        args.extend_from_slice(extra);
        args
    }
    one_clear_line(
        &run(&["--kernel", "/etc/passwd"]),
        "/etc/passwd is neither a bzImage nor an x86-64 ELF vmlinux",
    );
    one_clear_line(
        &run(&["--kernel", "/no/such/vmlinuz"]),
        "cannot read kernel /no/such/vmlinuz",
    );
    one_clear_line(
        &run(&["--kernel", "/etc/passwd", "--cpus", "0"]),
        "--cpus 0 is out of range",
    );
    one_clear_line(
        &run(&["--kernel", "/etc/passwd", "--memory", "1"]),
        "--memory 1 is out of range",
    );
    one_clear_line(
        &run(&["--kernel", "/etc/passwd", "--cpus", "two"]),
        "--cpus",
    );
    one_clear_line(&["run", "--initrd", "/i"], "--kernel");
    one_clear_line(
        &run(&["--kernel", "debian:6.1"]),
        "cargo xtask kernel fetch",
    );
}

#[test]
fn help_exits_zero() {
    let (code, _) = kestrel(&["--help"]);
    assert_eq!(code, 0);
}
