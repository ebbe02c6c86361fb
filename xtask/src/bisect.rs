//! `cargo xtask bisect`: the bisection engine of
//! [`kestrel_scenarios::bisect`] (git mode and list mode, typed records,
//! the user's tree restored on every exit) driven from this workspace:
//! state under `target/kestrel/bisect/`, scenarios looked up in this
//! workspace's `scenarios/` unless `--scenarios` is given, and — where
//! this host's KVM cannot boot Linux — every boot in the nested rig, one
//! rig call per boot (`bisect-boot`, its request and record as JSON in the
//! state directory). `kestrel bisect` is the same engine with boots on the
//! host.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kestrel_scenarios::bisect::{
    self as engine, BisectArgs, BootRecord, BootRequest, Booter, Conclusion, Engine, Here, State,
    StepArgs,
};

use crate::rig::{self, RigArgs};
use crate::{guest, paths, tools};

/// Boots in the nested rig: `xtask bisect-boot --request FILE` in L1.
struct InRig {
    xtask: PathBuf,
}

impl Booter for InRig {
    fn boot(&self, req: &BootRequest) -> Result<BootRecord> {
        let state = State {
            dir: req.state.clone(),
        };
        let request = state.request(&req.name);
        let record = state.record(&req.name);
        engine::write_json(&request, req)?;
        let _ = std::fs::remove_file(&record);
        let cmd = vec![
            self.xtask.display().to_string(),
            "bisect-boot".into(),
            "--request".into(),
            request.display().to_string(),
        ];
        let mut rig_args = RigArgs::for_cmd(cmd, 300);
        // The scenario's directory (its files, probes), even under /tmp.
        if let Some(dir) = req.scenario.parent().filter(|d| d.is_dir()) {
            rig_args.writable.push(dir.to_path_buf());
        }
        rig_args.memory = 2048;
        rig_args.timeout = 1800;
        match rig::run_retrying(&rig_args, 2, &engine::interrupted)? {
            0 => engine::read_json(&record),
            code => bail!("running the scenario in the rig failed (exit {code}): see above"),
        }
    }
}

/// `xtask bisect-boot --request FILE` (hidden; runs where KVM boots
/// kernels): one scenario run, its record written beside the request.
pub fn run_boot(request: &Path) -> Result<()> {
    let req: BootRequest = engine::read_json(request)?;
    let record = engine::boot_here(&req, &guest::build_kestrel()?)?;
    engine::write_json(
        &State {
            dir: req.state.clone(),
        }
        .record(&req.name),
        &record,
    )
}

/// The booter for this host: here on hardware KVM, else the rig.
fn booter(xtask: PathBuf, in_rig: bool) -> Result<Box<dyn Booter>> {
    Ok(if in_rig {
        Box::new(InRig { xtask })
    } else {
        Box::new(Here {
            kestrel: guest::build_kestrel()?,
        })
    })
}

/// `xtask bisect-step` (hidden; what `git bisect run` calls).
pub fn run_step(args: &StepArgs) -> u8 {
    engine::run_step(&args.state, args.kind, &|plan| {
        booter(std::env::current_exe()?, plan.rig)
    })
}

/// `cargo xtask bisect`: prints the report, returns the conclusion.
pub fn run(args: &BisectArgs) -> Result<Conclusion> {
    engine::take_signals()?;
    let request = args.request(&[paths::workspace().join("scenarios")])?;
    let state = State::create(&paths::kestrel_dir().join("bisect"))?;
    let xtask = state.copy_of_this_binary()?;
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    let in_rig = !guest::hardware_kvm(&kestrel);
    if in_rig {
        tools::step("bisect: this host's KVM cannot boot kernels; each boot runs in the rig");
    }
    let booter = booter(xtask.clone(), in_rig)?;
    let fetch = |spec: &str| guest::kernel(spec).map(|_| ());
    engine::run(
        &request,
        &Engine {
            state,
            step_command: vec![xtask.into_os_string(), "bisect-step".into()],
            booter: booter.as_ref(),
            rig: in_rig,
            kbuild_base: paths::kestrel_dir().join("kbuild"),
            fetch: &fetch,
        },
    )
}

pub mod fixture {
    //! `cargo xtask bisect-fixture`: the acceptance test of the whole
    //! workflow on a real tree.
    //!
    //! A git repository made from Debian's 6.1 source (hard links, so the
    //! cache's files are never written: every change here replaces a file
    //! by rename) with ten commits on branch `fixture` over the tag
    //! `fixture-base`: harmless ones, one that does not compile (then its
    //! fix), and exactly one guest-visible regression (`/proc/version`
    //! names the system "Linux-fixture"). `cargo xtask bisect` must name the
    //! regression, skip the broken commit, and leave the repository on
    //! `fixture` with a clean status; bad input must fail with one line and
    //! leave it untouched. The repository and its build directory are kept
    //! and reused by the next run.

    use std::process::Command;
    use std::time::Instant;

    use anyhow::Context;
    use kestrel_scenarios::bisect::{Policy, Ran, Step};

    use super::*;
    use kestrel_kernels::kbuild::{self, ConfigSet, Output, Plan};

    const BRANCH: &str = "fixture";
    const BASE_TAG: &str = "fixture-base";
    /// Subject of the regressing commit.
    pub const REGRESSION: &str = "fixture: /proc/version names the system Linux-fixture";
    const BROKEN: &str = "fixture: uptime does not compile";

    /// One commit: subject, file, text replaced, replacement.
    type Change = (&'static str, &'static str, &'static str, &'static str);

    /// The series. The broken commit sits where `git bisect` looks first
    /// (the middle), so the skip is exercised.
    const CHANGES: &[Change] = &[
        (
            "fixture: README wording",
            "README",
            "Linux kernel",
            "Linux kernel (fixture)",
        ),
        (
            "fixture: comment in kernel/panic.c",
            "kernel/panic.c",
            " * This function is used through-out the kernel",
            " * This function is used throughout the kernel",
        ),
        (
            "fixture: MAINTAINERS note",
            "MAINTAINERS",
            "List of maintainers",
            "List of maintainers (fixture)",
        ),
        (
            "fixture: comment in fs/proc/cmdline.c",
            "fs/proc/cmdline.c",
            "#include <linux/fs.h>",
            "#include <linux/fs.h> /* fixture */",
        ),
        (
            BROKEN,
            "fs/proc/uptime.c",
            "#include <linux/fs.h>",
            "#include <linux/fs.h>\nkestrel_fixture_does_not_compile;",
        ),
        (
            "fixture: uptime compiles again",
            "fs/proc/uptime.c",
            "#include <linux/fs.h>\nkestrel_fixture_does_not_compile;",
            "#include <linux/fs.h>",
        ),
        (
            REGRESSION,
            "fs/proc/version.c",
            "utsname()->sysname,",
            "\"Linux-fixture\",",
        ),
        (
            "fixture: comment in kernel/exit.c",
            "kernel/exit.c",
            " *  linux/kernel/exit.c",
            " *  linux/kernel/exit.c (fixture)",
        ),
        (
            "fixture: CREDITS note",
            "CREDITS",
            "This is at least a partial credits-file",
            "This is at least a partial credits-file (fixture)",
        ),
        (
            "fixture: comment in fs/proc/cmdline.c again",
            "fs/proc/cmdline.c",
            "/* fixture */",
            "/* fixture, again */",
        ),
    ];

    const SCENARIO: &str = "\
description = \"bisect fixture: /proc/version of a self-built kernel\"
run = [\"cat\", \"/proc/version\"]
redact_release = true
timeout = 60
";

    fn root() -> PathBuf {
        paths::kestrel_dir().join("bisect-fixture")
    }

    /// Replaces `from` by `to` in `path` through a new file (the old one may
    /// be a hard link into the cache).
    fn replace_in(path: &Path, from: &str, to: &str) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !text.contains(from) {
            bail!(
                "{} does not contain `{from}`: the fixture expects Debian's 6.1 source",
                path.display()
            );
        }
        let new = text.replacen(from, to, 1);
        let tmp = path.with_extension("kestrel-fixture-tmp");
        std::fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
        let perms = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .permissions();
        std::fs::set_permissions(&tmp, perms).ok();
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    fn git(repo: &Path, args: &[&str]) -> Result<String> {
        kbuild::git_output(repo, args)
    }

    /// The repository when it is complete and clean, else `None`.
    fn existing(repo: &Path) -> Option<()> {
        let subjects = git(
            repo,
            &["log", "--format=%s", &format!("{BASE_TAG}..{BRANCH}")],
        )
        .ok()?;
        let want: Vec<&str> = CHANGES.iter().rev().map(|c| c.0).collect();
        let have: Vec<&str> = subjects.lines().collect();
        let status = kbuild::git_status(repo)?;
        let branch = git(repo, &["symbolic-ref", "--short", "HEAD"]).ok()?;
        (have == want && status.trim().is_empty() && branch.trim() == BRANCH).then_some(())
    }

    /// Makes (or reuses) the repository; returns its path.
    pub fn repository() -> Result<PathBuf> {
        let repo = root().join("linux");
        if existing(&repo).is_some() {
            tools::step(format!("fixture: reusing {}", repo.display()));
            return Ok(repo);
        }
        let cache = kestrel_kernels::Cache::from_env()?;
        let tree = kestrel_kernels::source::fetch(&cache, kestrel_kernels::Series::V6_1)?;
        let start = Instant::now();
        if repo.exists() {
            std::fs::remove_dir_all(&repo)
                .with_context(|| format!("cannot remove the old fixture {}", repo.display()))?;
        }
        std::fs::create_dir_all(root())
            .with_context(|| format!("cannot create {}", root().display()))?;
        tools::step(format!(
            "fixture: hard-linking {} to {}",
            tree.dir.display(),
            repo.display()
        ));
        tools::run(Command::new("cp").arg("-al").arg(&tree.dir).arg(&repo))?;
        git(&repo, &["init", "-q", "-b", BRANCH])?;
        for (k, v) in [
            ("user.name", "Kestrel fixture"),
            ("user.email", "fixture@kestrel.invalid"),
            ("gc.auto", "0"),
            ("core.autocrlf", "false"),
        ] {
            git(&repo, &["config", k, v])?;
        }
        tools::step("fixture: committing the tree (git add of ~75k files)");
        // Forced: Debian's tree ignores everything at its top level.
        git(&repo, &["add", "-A", "-f"])?;
        git(
            &repo,
            &[
                "commit",
                "-q",
                "-m",
                &format!("{} {}", tree.manifest.package, tree.manifest.version),
            ],
        )?;
        git(&repo, &["tag", BASE_TAG])?;
        for (subject, file, from, to) in CHANGES {
            replace_in(&repo.join(file), from, to)?;
            git(&repo, &["commit", "-q", "-a", "-m", subject])?;
        }
        tools::step(format!(
            "fixture: {} commits over {BASE_TAG} in {:.1} s",
            CHANGES.len(),
            start.elapsed().as_secs_f64()
        ));
        Ok(repo)
    }

    /// `cargo xtask bisect-fixture` (`prepare`: only the repository).
    pub fn run(prepare: bool) -> Result<()> {
        let start = Instant::now();
        let repo = repository()?;
        if prepare {
            println!("{}", repo.display());
            return Ok(());
        }
        let scenario = root().join("proc_version_fixture.toml");
        std::fs::write(&scenario, SCENARIO)
            .with_context(|| format!("cannot write {}", scenario.display()))?;
        let head_before = git(&repo, &["rev-parse", "HEAD"])?;

        // Bad input: one line each, tree untouched.
        let err =
            run_git_only(&repo, "no-such-rev", BRANCH, &scenario, &[]).expect_err_message()?;
        ensure_contains(&err, "revision `no-such-rev` does not exist")?;
        eprintln!("fixture: bad revision → {err}");
        let unsat = root().join("unsatisfiable.config");
        std::fs::write(&unsat, "CONFIG_KVM_AMD=y\n")
            .with_context(|| format!("cannot write {}", unsat.display()))?;
        let plan = Plan {
            src: repo.clone(),
            out: root().join("kbuild-unsatisfiable"),
            configs: ConfigSet::parse(&[unsat.display().to_string()])?,
            jobs: kbuild::jobs(None)?,
            output: Output::LogFile,
            reproducible: true,
        };
        let err = match kbuild::build(&plan) {
            Ok(_) => bail!("a build asking for CONFIG_KVM_AMD=y without KVM succeeded"),
            Err(e) => format!("{:#}", e.into_inner()),
        };
        ensure_contains(&err, "CONFIG_KVM_AMD=y")?;
        ensure_contains(&err, "KVM is not set")?;
        eprintln!("fixture: unsatisfiable fragment → {err}");
        let err = match kbuild::check_source_tree(&root()) {
            Ok(_) => bail!("{} was taken for a kernel tree", root().display()),
            Err(e) => e.to_string(),
        };
        ensure_contains(&err, "is not a Linux kernel source tree")?;
        eprintln!("fixture: not a kernel tree → {err}");
        let status = kbuild::git_status(&repo).unwrap_or_default();
        let head = git(&repo, &["rev-parse", "HEAD"])?;
        if head != head_before || !status.trim().is_empty() {
            bail!("bad input changed the fixture repository");
        }
        tools::step("fixture: bad input gives one line each: ok");

        // The bisection.
        let conclusion = run_git_only(&repo, BASE_TAG, BRANCH, &scenario, &[])?;
        let regression = git(
            &repo,
            &["log", "--format=%H", "--grep", REGRESSION, "-F", BRANCH],
        )?;
        let regression = regression.trim();
        match &conclusion {
            Conclusion::FirstBad { sha, .. } if sha == regression => {}
            other => {
                bail!("the bisection concluded {other:?}, expected the regression {regression}")
            }
        }
        let head_after = git(&repo, &["rev-parse", "HEAD"])?;
        let branch = git(&repo, &["symbolic-ref", "--short", "HEAD"])?;
        let status = kbuild::git_status(&repo).unwrap_or_else(|| "not a git tree".into());
        if head_after != head_before || branch.trim() != BRANCH || !status.trim().is_empty() {
            bail!(
                "the fixture repository was not left as it was (branch {}, status {status:?})",
                branch.trim()
            );
        }
        let steps = last_state_steps()?;
        if !steps.iter().any(|s| s.verdict == Ran::BuildFailed) {
            bail!("the bisection never met the commit that does not build; the fixture's order no longer exercises skip");
        }
        tools::step(format!(
            "fixture: bisect named the regression, skipped the broken commit, left `{BRANCH}` clean ({} steps, {:.0} s)",
            steps.len(),
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    trait ExpectErr {
        fn expect_err_message(self) -> Result<String>;
    }

    impl<T> ExpectErr for Result<T> {
        fn expect_err_message(self) -> Result<String> {
            match self {
                Ok(_) => bail!("bad input was accepted"),
                Err(e) => Ok(format!("{e:#}")),
            }
        }
    }

    fn ensure_contains(msg: &str, needle: &str) -> Result<()> {
        if msg.contains(needle) && !msg.contains('\n') {
            Ok(())
        } else {
            bail!("expected one line containing `{needle}`, got: {msg}")
        }
    }

    fn run_git_only(
        repo: &Path,
        good: &str,
        bad: &str,
        scenario: &Path,
        config: &[String],
    ) -> Result<Conclusion> {
        super::run(&BisectArgs {
            src: Some(repo.to_owned()),
            good: Some(good.to_owned()),
            bad: Some(bad.to_owned()),
            kernels: Vec::new(),
            scenario: scenario.display().to_string(),
            scenarios: Vec::new(),
            build: kestrel_kernels::commands::BuildOptions {
                config: config.to_vec(),
                out: None,
                jobs: None,
            },
            on_timeout: Policy::Bad,
            on_boot_failure: Policy::Bad,
            pack: Vec::new(),
        })
    }

    /// The steps of the newest bisection state directory.
    fn last_state_steps() -> Result<Vec<Step>> {
        let dir = paths::kestrel_dir().join("bisect");
        let newest = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .flatten()
            .filter(|e| e.path().join("steps.jsonl").is_file())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .context("no bisection state found")?;
        Ok(State { dir: newest.path() }.read_steps())
    }
}
