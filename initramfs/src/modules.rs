//! Kernel modules: which files to pack, in which order, for a list of
//! requested module names.
//!
//! [`ModulesDir`] reads one `lib/modules/<version>/` directory: its
//! `modules.dep` (or, when depmod never ran — Debian's packages do not ship
//! it — the `depends=` field of each needed module's `.modinfo`),
//! `modules.builtin` and `modules.alias`. Invariants of
//! [`ModulesDir::resolve`]: every module comes after all of its
//! dependencies, none appears twice, built-in modules are left out, and a
//! dependency cycle is an error (never a hang). Module names are compared
//! normalised (`kvm-amd` == `kvm_amd`). [`pack_modules`] decompresses
//! `.ko.xz`, `.ko.zst` and `.ko.gz` on the host so the guest init only ever
//! sees plain `.ko` files under [`job::MODULES_DIR`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::cpio::{Archive, ArchiveError};
use crate::elf::{Elf, FormatError};
use crate::job;

/// Suffixes of module files, longest first.
const SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// Why modules could not be resolved or packed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The directory has neither `modules.dep` nor any module file.
    #[error("{} has no modules.dep and no *.ko files; pass a kernel modules directory such as /lib/modules/<version>", dir.display())]
    NotAModulesDir { dir: PathBuf },
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A requested (or needed) module is neither a module nor built in.
    #[error("kernel module {name:?}{needed_by} is neither a module under {} nor built in (modules.builtin); check the name (e.g. `virtio_pci`, `kvm-amd`) and that the kernel config enables it", dir.display())]
    NotFound {
        name: String,
        /// ` (needed by X)` or empty.
        needed_by: String,
        dir: PathBuf,
    },
    /// The dependency graph has a cycle.
    #[error("kernel module dependency cycle: {chain}; the kernel cannot load these, regenerate modules.dep with depmod or fix the modules")]
    Cycle { chain: String },
    /// A compressed module could not be decompressed.
    #[error("decompressing kernel module {}: {why}", path.display())]
    Decompress { path: PathBuf, why: String },
    /// A module's `.modinfo` could not be read (fallback without modules.dep).
    #[error("kernel module {}: {source}; run depmod to create modules.dep instead", path.display())]
    Modinfo { path: PathBuf, source: FormatError },
    /// Adding a module to the archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// A module to load, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Normalised module name (`kvm_amd`).
    pub name: String,
    /// Host path of the (maybe compressed) module file.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
struct Known {
    path: PathBuf,
    /// From modules.dep; `None`: read `.modinfo` when needed.
    deps: Option<Vec<String>>,
}

/// One kernel's modules directory, indexed. See the module docs.
#[derive(Debug, Clone)]
pub struct ModulesDir {
    dir: PathBuf,
    modules: BTreeMap<String, Known>,
    builtin: HashSet<String>,
    /// Exact (wildcard-free) alias -> module names.
    aliases: HashMap<String, Vec<String>>,
}

/// Normalises a module name or file name: the directory and any `.ko*`
/// suffix are dropped and `-` becomes `_` (`kernel/x/kvm-amd.ko.xz` →
/// `kvm_amd`).
pub fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let stem = SUFFIXES
        .iter()
        .find_map(|suf| base.strip_suffix(suf))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// Where a module is packed in the archive, absolute (`/kestrel/modules/x.ko`).
pub fn archive_path(name: &str) -> String {
    format!("/{}/{}.ko", job::MODULES_DIR, module_name(name))
}

fn read_text(path: &Path) -> Result<Option<String>, ModuleError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModuleError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A path from modules.dep: relative to `dir`, or (old depmod) absolute
/// under some `/lib/modules/<version>/`, which is re-rooted at `dir` so a
/// tree unpacked elsewhere still works.
fn dep_path(dir: &Path, path: &str) -> PathBuf {
    if let Some((_, rest)) = path.split_once("/lib/modules/") {
        if let Some((_, inside)) = rest.split_once('/') {
            return dir.join(inside);
        }
    }
    dir.join(path)
}

/// Module files under `dir`, recursively, in sorted order; symlinks (such
/// as `build` and `source`) are not followed.
fn scan(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModuleError> {
    let read_err = |source| ModuleError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let ft = entry.file_type().map_err(read_err)?;
        let path = entry.path();
        if ft.is_dir() {
            scan(&path, out)?;
        } else if ft.is_file() && SUFFIXES.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            out.push(path);
        }
    }
    Ok(())
}

impl ModulesDir {
    /// Indexes `dir` (a `lib/modules/<version>/` directory).
    pub fn open(dir: impl AsRef<Path>) -> Result<ModulesDir, ModuleError> {
        let dir = dir.as_ref().to_path_buf();
        let mut modules = BTreeMap::new();
        if let Some(text) = read_text(&dir.join("modules.dep"))? {
            for line in text.lines() {
                let Some((path, deps)) = line.split_once(':') else {
                    continue;
                };
                let path = dep_path(&dir, path.trim());
                let deps = deps.split_whitespace().map(module_name).collect();
                modules
                    .entry(module_name(&path.to_string_lossy()))
                    .or_insert(Known {
                        path,
                        deps: Some(deps),
                    });
            }
        } else if dir.is_dir() {
            let mut files = Vec::new();
            scan(&dir, &mut files)?;
            for path in files {
                modules
                    .entry(module_name(&path.to_string_lossy()))
                    .or_insert(Known { path, deps: None });
            }
        }
        if modules.is_empty() {
            return Err(ModuleError::NotAModulesDir { dir });
        }
        let builtin = read_text(&dir.join("modules.builtin"))?
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| module_name(l.trim()))
            .collect();
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for line in read_text(&dir.join("modules.alias"))?
            .unwrap_or_default()
            .lines()
        {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if !alias.contains(['*', '?', '[']) {
                    aliases
                        .entry(alias.to_string())
                        .or_default()
                        .push(module_name(module));
                }
            }
        }
        Ok(ModulesDir {
            dir,
            modules,
            builtin,
            aliases,
        })
    }

    /// True if `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// The load order for `requested`: dependencies first, no duplicates,
    /// built-in modules skipped. Names may use `-` or `_`, or be an exact
    /// alias from `modules.alias` (e.g. `fs-virtiofs`).
    pub fn resolve<S: AsRef<str>>(
        &self,
        requested: &[S],
    ) -> Result<Vec<ResolvedModule>, ModuleError> {
        let mut walk = Walk {
            dir: self,
            done: HashSet::new(),
            stack: Vec::new(),
            out: Vec::new(),
        };
        for req in requested {
            let req = req.as_ref();
            let name = module_name(req);
            if self.modules.contains_key(&name) {
                walk.visit(&name)?;
            } else if self.builtin.contains(&name) {
                continue;
            } else if let Some(targets) = self.aliases.get(req).or_else(|| self.aliases.get(&name))
            {
                for target in targets {
                    if !self.builtin.contains(target) {
                        walk.visit(target)?;
                    }
                }
            } else {
                return Err(self.not_found(&name, None));
            }
        }
        Ok(walk.out)
    }

    /// Every module of the tree in `modules.dep` form, for tools that
    /// expect depmod's output (kmod's `modprobe` in a guest): its path,
    /// all of its dependencies (transitive, each once, listed so that
    /// loading from the last to the first works, as depmod writes them)
    /// and the aliases from its `.modinfo`. Each module file is read once;
    /// the order is by module name. Same invariants as [`Self::resolve`]: a
    /// cycle or a missing dependency is an error.
    pub fn index(&self) -> Result<Vec<IndexedModule>, ModuleError> {
        let mut direct: HashMap<&str, Vec<String>> = HashMap::new();
        let mut aliases: HashMap<&str, Vec<String>> = HashMap::new();
        for (name, known) in &self.modules {
            let data = read_module(&known.path)?;
            let info = modinfo(&data).map_err(|source| ModuleError::Modinfo {
                path: known.path.clone(),
                source,
            })?;
            let deps = match &known.deps {
                Some(deps) => deps.iter().rev().cloned().collect(),
                None => info
                    .iter()
                    .filter(|(k, _)| k == "depends")
                    .flat_map(|(_, v)| v.split(',').filter(|d| !d.is_empty()).map(module_name))
                    .collect(),
            };
            direct.insert(name, deps);
            aliases.insert(
                name,
                info.into_iter()
                    .filter(|(k, _)| k == "alias")
                    .map(|(_, v)| v)
                    .collect(),
            );
        }
        let mut out = Vec::with_capacity(self.modules.len());
        for (name, known) in &self.modules {
            let mut order = Vec::new();
            let mut done = HashSet::new();
            let mut stack = Vec::new();
            self.closure(name, &direct, &mut done, &mut stack, &mut order)?;
            order.pop(); // the module itself comes last
            out.push(IndexedModule {
                name: name.clone(),
                path: known.path.clone(),
                deps: order
                    .iter()
                    .rev()
                    .filter_map(|d| self.modules.get(d).map(|k| k.path.clone()))
                    .collect(),
                aliases: aliases.remove(name.as_str()).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Post-order walk over `direct` (the in-memory form of [`Walk`]).
    fn closure(
        &self,
        name: &str,
        direct: &HashMap<&str, Vec<String>>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|n| n == name) {
            let mut chain = stack[pos..].to_vec();
            chain.push(name.to_string());
            return Err(ModuleError::Cycle {
                chain: chain.join(" -> "),
            });
        }
        let Some(deps) = direct.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            return Err(self.not_found(name, stack.last().map(String::as_str)));
        };
        stack.push(name.to_string());
        for dep in deps {
            self.closure(dep, direct, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }

    /// The directory this index was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn not_found(&self, name: &str, needed_by: Option<&str>) -> ModuleError {
        ModuleError::NotFound {
            name: name.to_string(),
            needed_by: needed_by.map_or(String::new(), |n| format!(" (needed by {n})")),
            dir: self.dir.clone(),
        }
    }

    /// Direct dependencies of `name` (a known module), in load order.
    fn deps_of(&self, known: &Known) -> Result<Vec<String>, ModuleError> {
        if let Some(deps) = &known.deps {
            // modules.dep lists them so that loading from the end works.
            return Ok(deps.iter().rev().cloned().collect());
        }
        let data = read_module(&known.path)?;
        Ok(modinfo(&data)
            .map_err(|source| ModuleError::Modinfo {
                path: known.path.clone(),
                source,
            })?
            .into_iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(module_name)
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

/// One module as [`ModulesDir::index`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedModule {
    /// Normalised module name (`kvm_amd`).
    pub name: String,
    /// Host path of the module file.
    pub path: PathBuf,
    /// Host paths of every module it needs, the one to load last first.
    pub deps: Vec<PathBuf>,
    /// `alias=` entries of its `.modinfo` (patterns such as `fs-virtiofs`,
    /// `pci:v00001AF4d*`).
    pub aliases: Vec<String>,
}

/// Depth-first post-order walk with cycle detection.
struct Walk<'a> {
    dir: &'a ModulesDir,
    done: HashSet<String>,
    /// Modules being visited, outermost first.
    stack: Vec<String>,
    out: Vec<ResolvedModule>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str) -> Result<(), ModuleError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = self.stack.iter().position(|n| n == name) {
            let mut chain = self.stack[pos..].to_vec();
            chain.push(name.to_string());
            return Err(ModuleError::Cycle {
                chain: chain.join(" -> "),
            });
        }
        let Some(known) = self.dir.modules.get(name) else {
            if self.dir.builtin.contains(name) {
                return Ok(());
            }
            return Err(self
                .dir
                .not_found(name, self.stack.last().map(String::as_str)));
        };
        self.stack.push(name.to_string());
        for dep in self.dir.deps_of(known)? {
            self.visit(&dep)?;
        }
        self.stack.pop();
        self.done.insert(name.to_string());
        self.out.push(ResolvedModule {
            name: name.to_string(),
            path: known.path.clone(),
        });
        Ok(())
    }
}

/// The `key=value` pairs of a module's `.modinfo` section, in order.
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>, FormatError> {
    let elf = Elf::parse(ko)?;
    let Some(section) = elf.section(".modinfo")? else {
        return Ok(Vec::new());
    };
    Ok(section
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
/// The result must be an ELF file.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let raw = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.to_string_lossy();
    let fail = |why: String| ModuleError::Decompress {
        path: path.to_path_buf(),
        why,
    };
    let data = if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).map_err(|e| fail(e.to_string()))?;
        out
    } else if name.ends_with(".ko.zst") {
        let mut out = Vec::new();
        let mut input = raw.as_slice();
        // A file may hold several frames; decode until the input is used up.
        while !input.is_empty() {
            let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
                .map_err(|e| fail(e.to_string()))?;
            decoder
                .read_to_end(&mut out)
                .map_err(|e| fail(e.to_string()))?;
        }
        out
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        out
    } else {
        raw
    };
    if !data.starts_with(b"\x7fELF") {
        return Err(fail("the result is not an ELF file".into()));
    }
    Ok(data)
}

/// Resolves `requested` in `dir` and packs the modules, decompressed, into
/// `archive` under [`job::MODULES_DIR`]. Returns the base spec's module
/// list in load order (archive paths, no parameters).
pub fn pack_modules<S: AsRef<str>>(
    archive: &mut Archive,
    dir: &ModulesDir,
    requested: &[S],
) -> Result<Vec<job::Module>, ModuleError> {
    let mut specs = Vec::new();
    for module in dir.resolve(requested)? {
        let data = read_module(&module.path)?;
        let path = archive_path(&module.name);
        archive.add_file(&path, 0o644, &data)?;
        specs.push(job::Module {
            path,
            params: String::new(),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{read_entries, tests::TempDir};
    use crate::elf::tests::craft_elf;

    /// A module file whose `.modinfo` names it and its dependencies.
    fn ko(name: &str, depends: &[&str]) -> Vec<u8> {
        let info = format!(
            "license=GPL\0depends={}\0name={name}\0alias=mod-{name}\0",
            depends.join(",")
        );
        craft_elf(None, &[], None, &[(".modinfo", info.as_bytes())])
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut out).unwrap();
        out
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A synthetic tree: a diamond (top -> left, right -> base), compressed
    /// files, a built-in module, and a dash in a file name.
    /// `with_dep`: write modules.dep (else rely on `.modinfo`).
    fn tree(with_dep: bool) -> TempDir {
        let tmp = TempDir::new("modules");
        let d = tmp.path();
        for sub in ["kernel/a", "kernel/b", "build"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let files: [(&str, Vec<u8>); 5] = [
            ("kernel/a/base.ko", ko("base", &[])),
            ("kernel/a/left.ko.xz", xz(&ko("left", &["base"]))),
            ("kernel/b/right.ko.zst", zst(&ko("right", &["base"]))),
            (
                "kernel/b/top-mod.ko.gz",
                gz(&ko("top_mod", &["left", "right"])),
            ),
            ("kernel/b/solo.ko", ko("solo", &[])),
        ];
        for (path, data) in &files {
            std::fs::write(d.join(path), data).unwrap();
        }
        if with_dep {
            std::fs::write(
                d.join("modules.dep"),
                "kernel/a/base.ko:\n\
                 kernel/a/left.ko.xz: kernel/a/base.ko\n\
                 kernel/b/right.ko.zst: kernel/a/base.ko\n\
                 kernel/b/top-mod.ko.gz: kernel/b/right.ko.zst kernel/a/left.ko.xz kernel/a/base.ko\n\
                 kernel/b/solo.ko:\n",
            )
            .unwrap();
        }
        std::fs::write(
            d.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/x/built-in-thing.ko\n",
        )
        .unwrap();
        std::fs::write(
            d.join("modules.alias"),
            "alias fs-top top_mod\nalias pci:v*d* solo\n",
        )
        .unwrap();
        tmp
    }

    fn names(order: &[ResolvedModule]) -> Vec<&str> {
        order.iter().map(|m| m.name.as_str()).collect()
    }

    fn check_diamond(dir: &ModulesDir) {
        let order = dir
            .resolve(&["top-mod", "base", "solo", "ext4", "built_in_thing"])
            .unwrap();
        let n = names(&order);
        assert_eq!(n.len(), 5, "{n:?}");
        let pos = |m: &str| n.iter().position(|x| *x == m).unwrap();
        assert!(
            pos("base") < pos("left") && pos("base") < pos("right"),
            "{n:?}"
        );
        assert!(
            pos("left") < pos("top_mod") && pos("right") < pos("top_mod"),
            "{n:?}"
        );
        assert_eq!(n[4], "solo");
        // Same input, same order.
        assert_eq!(
            order,
            dir.resolve(&["top-mod", "base", "solo", "ext4", "built_in_thing"])
                .unwrap()
        );
        // Alias.
        assert_eq!(
            names(&dir.resolve(&["fs-top"]).unwrap()).last(),
            Some(&"top_mod")
        );
    }

    #[test]
    fn diamond_with_modules_dep() {
        let tmp = tree(true);
        check_diamond(&ModulesDir::open(tmp.path()).unwrap());
    }

    #[test]
    fn diamond_from_modinfo_without_modules_dep() {
        let tmp = tree(false);
        check_diamond(&ModulesDir::open(tmp.path()).unwrap());
    }

    #[test]
    fn missing_module_is_named() {
        let tmp = tree(true);
        let dir = ModulesDir::open(tmp.path()).unwrap();
        let e = dir.resolve(&["solo", "no-such-mod"]).unwrap_err();
        assert!(
            matches!(&e, ModuleError::NotFound { name, .. } if name == "no_such_mod"),
            "{e}"
        );
        assert!(e.to_string().contains("no_such_mod"));
        // A dependency that exists nowhere names its user.
        std::fs::write(
            tmp.path().join("modules.dep"),
            "kernel/b/solo.ko: kernel/gone.ko\n",
        )
        .unwrap();
        let e = ModulesDir::open(tmp.path())
            .unwrap()
            .resolve(&["solo"])
            .unwrap_err();
        assert!(e.to_string().contains("needed by solo"), "{e}");
        let empty = TempDir::new("modules-empty");
        assert!(matches!(
            ModulesDir::open(empty.path()),
            Err(ModuleError::NotAModulesDir { .. })
        ));
    }

    #[test]
    fn index_lists_every_module_with_all_its_deps_in_depmod_order() {
        for with_dep in [true, false] {
            let tmp = tree(with_dep);
            let dir = ModulesDir::open(tmp.path()).unwrap();
            let index = dir.index().unwrap();
            let names: Vec<&str> = index.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["base", "left", "right", "solo", "top_mod"]);
            let top = &index[4];
            assert_eq!(top.path, tmp.path().join("kernel/b/top-mod.ko.gz"));
            // Loaded from the end: base first, top_mod's direct deps after.
            let rel: Vec<String> = top
                .deps
                .iter()
                .map(|p| p.strip_prefix(tmp.path()).unwrap().display().to_string())
                .collect();
            assert_eq!(rel.last().map(String::as_str), Some("kernel/a/base.ko"));
            assert_eq!(rel.len(), 3, "{rel:?}");
            // The same order `resolve` loads in.
            let mut load: Vec<PathBuf> = top.deps.iter().rev().cloned().collect();
            load.push(top.path.clone());
            let resolved: Vec<PathBuf> = dir
                .resolve(&["top_mod"])
                .unwrap()
                .into_iter()
                .map(|m| m.path)
                .collect();
            assert_eq!(load, resolved);
            assert!(index[0].deps.is_empty());
            assert_eq!(top.aliases, ["mod-top_mod"]);
        }
    }

    #[test]
    fn cycle_is_an_error_not_a_hang() {
        let tmp = tree(true);
        std::fs::write(
            tmp.path().join("modules.dep"),
            "kernel/a/base.ko: kernel/b/solo.ko\nkernel/b/solo.ko: kernel/a/base.ko\n",
        )
        .unwrap();
        let e = ModulesDir::open(tmp.path())
            .unwrap()
            .resolve(&["solo"])
            .unwrap_err();
        assert!(matches!(e, ModuleError::Cycle { .. }), "{e}");
        // And through .modinfo.
        let tmp = tree(false);
        std::fs::write(
            tmp.path().join("kernel/a/base.ko"),
            ko("base", &["top_mod"]),
        )
        .unwrap();
        let e = ModulesDir::open(tmp.path())
            .unwrap()
            .resolve(&["top_mod"])
            .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn packs_decompressed_modules_in_order() {
        let tmp = tree(true);
        let dir = ModulesDir::open(tmp.path()).unwrap();
        let mut archive = Archive::new();
        let specs = pack_modules(&mut archive, &dir, &["top-mod"]).unwrap();
        let paths: Vec<_> = specs.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths.len(), 4);
        assert_eq!(paths[0], "/kestrel/modules/base.ko");
        assert_eq!(paths[3], "/kestrel/modules/top_mod.ko");
        assert!(specs.iter().all(|m| m.params.is_empty()));
        let (entries, _) = read_entries(&archive.to_bytes().unwrap()).unwrap();
        let top = entries
            .iter()
            .find(|e| e.name == "kestrel/modules/top_mod.ko")
            .unwrap();
        assert_eq!(top.data, ko("top_mod", &["left", "right"]));
        let right = entries
            .iter()
            .find(|e| e.name == "kestrel/modules/right.ko")
            .unwrap();
        assert_eq!(
            modinfo(&right.data).unwrap()[2],
            ("name".into(), "right".into())
        );
    }

    #[test]
    fn corrupt_compressed_module_is_an_error() {
        let tmp = tree(true);
        std::fs::write(tmp.path().join("kernel/a/left.ko.xz"), b"not xz").unwrap();
        std::fs::write(tmp.path().join("kernel/b/right.ko.zst"), xz(b"not elf")).unwrap();
        let dir = ModulesDir::open(tmp.path()).unwrap();
        let mut archive = Archive::new();
        let e = pack_modules(&mut archive, &dir, &["left"]).unwrap_err();
        assert!(matches!(e, ModuleError::Decompress { .. }), "{e}");
        let e = pack_modules(&mut archive, &dir, &["right"]).unwrap_err();
        assert!(matches!(e, ModuleError::Decompress { .. }), "{e}");
    }

    #[test]
    fn absolute_dep_paths_are_rerooted() {
        let d = Path::new("/tmp/tree");
        assert_eq!(
            dep_path(d, "/lib/modules/5.4.0/kernel/fs/fuse/fuse.ko"),
            d.join("kernel/fs/fuse/fuse.ko")
        );
        assert_eq!(dep_path(d, "kernel/x.ko"), d.join("kernel/x.ko"));
    }

    #[test]
    fn names_normalise() {
        assert_eq!(module_name("kvm-amd"), "kvm_amd");
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko.zst"), "kvm_amd");
        assert_eq!(module_name("virtio_pci.ko"), "virtio_pci");
        assert_eq!(archive_path("kvm-amd"), "/kestrel/modules/kvm_amd.ko");
    }

    /// Runs on a real Debian 6.1 cloud tree when CI provides one.
    #[test]
    fn real_debian_cloud_tree() {
        let Some(dir) = std::env::var_os("KESTREL_TEST_MODULES_DIR") else {
            eprintln!(
                "skipped real_debian_cloud_tree: KESTREL_TEST_MODULES_DIR is unset \
                 (set it to a lib/modules/<version> directory of a Debian 6.1 cloud kernel)"
            );
            return;
        };
        let dir = ModulesDir::open(PathBuf::from(dir)).unwrap();
        let order = dir
            .resolve(&["virtio_pci", "virtio_console", "virtiofs", "kvm_amd"])
            .unwrap();
        let n = names(&order);
        let pos = |m: &str| {
            n.iter()
                .position(|x| *x == m)
                .unwrap_or_else(|| panic!("{m} missing from {n:?}"))
        };
        assert!(pos("fuse") < pos("virtiofs"), "{n:?}");
        assert!(pos("virtio") < pos("virtio_pci"), "{n:?}");
        assert!(pos("virtio_ring") < pos("virtiofs"), "{n:?}");
        assert!(pos("kvm") < pos("kvm_amd"), "{n:?}");
        assert!(pos("irqbypass") < pos("kvm"), "{n:?}");
        assert!(order.iter().all(|m| m.path.is_file()), "{order:?}");
        let mut unique = n.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), n.len());
        for m in &order {
            let info = modinfo(&read_module(&m.path).unwrap()).unwrap();
            assert!(
                info.iter().any(|(k, v)| k == "name" && *v == m.name),
                "{}",
                m.name
            );
        }
    }
}
