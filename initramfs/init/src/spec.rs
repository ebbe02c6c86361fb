//! Reading the job spec: the base spec (optional) then the job spec, merged
//! into one [`Spec`]. The format and its invariants live in `job.rs`.
//!
//! An initramfs with a base spec but no job spec is a base archive booted
//! alone (a warm start's snapshot): its job comes over the status channel
//! (`jobwait.rs`). Without a base spec the job spec is required, so a
//! foreign initramfs fails at once instead of waiting for a job.

use std::io;
use std::path::Path;

use kestrel_initramfs::job::{Spec, BASE_SPEC_PATH, JOB_SPEC_PATH};

use crate::error::InitError;

/// What the initramfs says.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// The base spec (if any) and the job spec, merged: a cold boot.
    Job(Spec),
    /// The base spec alone: the job comes over the status channel.
    BaseOnly(Spec),
}

/// Reads the specs of the initramfs mounted at `root` (`/` in the guest).
pub fn load(root: &Path) -> Result<Loaded, InitError> {
    let mut spec = Spec::default();
    let has_base = merge_file(&mut spec, root, BASE_SPEC_PATH, true)?;
    if merge_file(&mut spec, root, JOB_SPEC_PATH, has_base)? {
        Ok(Loaded::Job(spec))
    } else {
        Ok(Loaded::BaseOnly(spec))
    }
}

/// Merges the file `rel` into `spec`; `Ok(false)`: it is `optional` and
/// missing.
fn merge_file(spec: &mut Spec, root: &Path, rel: &str, optional: bool) -> Result<bool, InitError> {
    let path = root.join(rel);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(InitError::os(format!("read {}", path.display()), &e)),
    };
    let text = String::from_utf8(text)
        .map_err(|_| InitError::msg(format!("parse {}: not UTF-8", path.display())))?;
    spec.merge_parse(&text)
        .map_err(|e| InitError::msg(format!("parse {}: {e}", path.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use kestrel_initramfs::job::{Module, MAGIC};

    fn write(dir: &TestDir, rel: &str, text: &str) {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn base_is_optional() {
        let dir = TestDir::new("spec-nobase");
        write(&dir, JOB_SPEC_PATH, &format!("{MAGIC}\narg true\n"));
        let Loaded::Job(spec) = load(dir.path()).unwrap() else {
            panic!("a job spec is a cold boot");
        };
        assert_eq!(spec.argv, ["true"]);
        assert!(spec.modules.is_empty());
    }

    #[test]
    fn merges_base_then_job() {
        let dir = TestDir::new("spec-merge");
        write(
            &dir,
            BASE_SPEC_PATH,
            &format!("{MAGIC}\nmodule /kestrel/modules/fuse.ko %\n"),
        );
        write(
            &dir,
            JOB_SPEC_PATH,
            &format!("{MAGIC}\narg sh\narg -c\narg exit%203\n"),
        );
        let Loaded::Job(spec) = load(dir.path()).unwrap() else {
            panic!("a job spec is a cold boot");
        };
        assert_eq!(
            spec.modules,
            [Module {
                path: "/kestrel/modules/fuse.ko".into(),
                params: String::new()
            }]
        );
        assert_eq!(spec.argv, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn missing_job_is_an_error_naming_the_file() {
        let dir = TestDir::new("spec-nojob");
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("read "), "{e}");
        assert!(e.ends_with("kestrel/job.spec: ENOENT"), "{e}");
    }

    #[test]
    fn base_without_job_waits_for_the_job() {
        let dir = TestDir::new("spec-baseonly");
        write(
            &dir,
            BASE_SPEC_PATH,
            &format!("{MAGIC}\nmodule /kestrel/modules/fuse.ko %\n"),
        );
        let Loaded::BaseOnly(spec) = load(dir.path()).unwrap() else {
            panic!("no job spec: the job comes over the channel");
        };
        assert_eq!(spec.modules.len(), 1);
        assert!(spec.argv.is_empty() && spec.status.is_none());
    }

    #[test]
    fn invalid_files_are_errors_with_line_numbers() {
        let dir = TestDir::new("spec-invalid");
        write(&dir, BASE_SPEC_PATH, &format!("{MAGIC}\nbogus x\n"));
        write(&dir, JOB_SPEC_PATH, &format!("{MAGIC}\narg true\n"));
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("kestrel/base.spec: spec line 2"), "{e}");

        write(&dir, BASE_SPEC_PATH, &format!("{MAGIC}\n"));
        write(&dir, JOB_SPEC_PATH, "not a spec\n");
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("kestrel/job.spec: spec line 1"), "{e}");

        std::fs::write(dir.path().join(JOB_SPEC_PATH), b"\xff\xfe").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("job.spec: not UTF-8"), "{e}");
    }
}
