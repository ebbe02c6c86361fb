//! Reading the job spec: the base spec (optional) then the job spec, merged
//! into one [`Spec`]. The format and its invariants live in `job.rs`.

use std::io;
use std::path::Path;

use kestrel_initramfs::job::{Spec, BASE_SPEC_PATH, JOB_SPEC_PATH};

use crate::error::InitError;

/// Reads the specs of the initramfs mounted at `root` (`/` in the guest).
pub fn load(root: &Path) -> Result<Spec, InitError> {
    let mut spec = Spec::default();
    merge_file(&mut spec, root, BASE_SPEC_PATH, true)?;
    merge_file(&mut spec, root, JOB_SPEC_PATH, false)?;
    Ok(spec)
}

fn merge_file(spec: &mut Spec, root: &Path, rel: &str, optional: bool) -> Result<(), InitError> {
    let path = root.join(rel);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(InitError::os(format!("read {}", path.display()), &e)),
    };
    let text = String::from_utf8(text)
        .map_err(|_| InitError::msg(format!("parse {}: not UTF-8", path.display())))?;
    spec.merge_parse(&text)
        .map_err(|e| InitError::msg(format!("parse {}: {e}", path.display())))
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
        let spec = load(dir.path()).unwrap();
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
        let spec = load(dir.path()).unwrap();
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
