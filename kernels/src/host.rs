//! Host programs: finding them, installing Debian packages, describing a
//! command, progress lines. Shared by xtask and the installed `kestrel`.
//!
//! Invariant: a missing tool is installed through apt only when we are
//! root; otherwise the user gets one sentence naming the package to
//! install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Prints one progress line on stderr.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("\x1b[1m==>\x1b[0m {}", msg.as_ref());
}

/// Looks a program up in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages, refreshing the apt index first when a package
/// is unknown to it or apt cannot plan the install with the index it has.
/// Not root: one sentence naming the packages.
///
/// Nothing the user has is removed: apt's plan is read first (`-s`), and
/// a plan that removes any installed package is refused with a sentence
/// naming it (a backports `qemu-utils` beside Debian 12's QEMU 7.2 is such
/// a case); the install itself runs with `--no-remove` as well.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "Kestrel needs Debian's {} here: install {} (sudo apt-get install {}) and run this again",
            packages.join(", "),
            if packages.len() == 1 { "it" } else { "them" },
            packages.join(" ")
        );
    }
    let known = Command::new("apt-cache")
        .arg("show")
        .args(packages)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let update = || {
        step("refreshing the apt index (apt-get update)");
        run(Command::new("apt-get").args(["update"]))
    };
    if !known {
        update()?;
    }
    let simulate = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-s", "--no-install-recommends"])
            .args(packages)
            .output()
            .context("could not run apt-get")
    };
    let mut plan = simulate()?;
    if !plan.status.success() && known {
        // An index older than the installed packages cannot plan
        // ("held broken packages"); a fresh one usually can.
        update()?;
        plan = simulate()?;
    }
    if !plan.status.success() {
        let stderr = String::from_utf8_lossy(&plan.stderr);
        let why = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no reason given")
            .trim();
        bail!(
            "apt cannot install {} here ({why}): install {} by hand and run this again",
            packages.join(" "),
            if packages.len() == 1 { "it" } else { "them" }
        );
    }
    let removed = planned_removals(&String::from_utf8_lossy(&plan.stdout));
    if !removed.is_empty() {
        bail!(
            "installing {} with apt would remove {} (installed here), and Kestrel removes nothing you have: \
             install {} yourself and run this again",
            packages.join(" "),
            removed.join(", "),
            if packages.len() == 1 { "it" } else { "them" }
        );
    }
    step(format!("installing {} with apt", packages.join(" ")));
    let start = Instant::now();
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends", "--no-remove"])
        .args(packages))?;
    step(format!(
        "installed in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The packages an `apt-get install -s` plan removes (its `Remv NAME …`
/// lines).
fn planned_removals(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Of dependency groups (alternatives within a group), the first name of
/// each group that no installed package satisfies, in order, once each.
/// Versions are not compared: a too-old library shows when the program
/// that needs it does not start.
pub fn unsatisfied_packages(groups: &[Vec<String>]) -> Vec<String> {
    let names: Vec<&str> = groups.iter().flatten().map(String::as_str).collect();
    let installed = installed_packages(&names);
    unsatisfied(groups, |name| installed.iter().any(|i| i == name))
}

fn unsatisfied(groups: &[Vec<String>], installed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for group in groups {
        if group.iter().any(|name| installed(name)) {
            continue;
        }
        if let Some(first) = group.first() {
            if !out.contains(first) {
                out.push(first.clone());
            }
        }
    }
    out
}

/// Which of `names` dpkg lists as installed (`ii`); none when dpkg-query
/// is missing.
fn installed_packages(names: &[&str]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(names)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            (words.next()? == "ii").then(|| name.to_owned())
        })
        .collect()
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// A short human description of a command: program and arguments.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_that_removes_a_package_is_read_from_apts_simulation() {
        // `apt-get install -s qemu-system-x86` on Debian 12 with a
        // backports qemu-utils installed (trimmed).
        let sim = "NOTE: This is only a simulation!\n\
                   The following packages will be REMOVED:\n  qemu-utils\n\
                   Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
                   Inst seabios (1.16.2-1 Debian:12.12/stable [all])\n\
                   Conf seabios (1.16.2-1 Debian:12.12/stable [all])\n";
        assert_eq!(planned_removals(sim), vec!["qemu-utils".to_owned()]);
        assert!(
            planned_removals("Inst kmod (30+20221128-1 Debian:12.12/stable [amd64])\n").is_empty()
        );
    }

    #[test]
    fn only_groups_with_no_installed_alternative_are_missing() {
        let groups: Vec<Vec<String>> = [
            vec!["libc6"],
            vec!["seabios"],
            vec!["libslirp0", "libslirp-dev"],
            vec!["ipxe-qemu"],
            vec!["seabios"],
            vec!["libfoo", "libbar"],
        ]
        .iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect();
        let installed = |name: &str| matches!(name, "libc6" | "libslirp-dev" | "libbar");
        assert_eq!(
            unsatisfied(&groups, installed),
            vec!["seabios", "ipxe-qemu"]
        );
        assert!(unsatisfied(&[], installed).is_empty());
    }
}
