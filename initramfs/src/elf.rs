//! ELF reading, read-only and hand-parsed: the interpreter and dynamic
//! section of executables (to find the shared-library closure without
//! running `ldd`), and named sections (a kernel module's `.modinfo`).
//!
//! Invariant: parsing never panics or reads out of bounds on any input —
//! every offset and size taken from the file is checked against its length,
//! and a bad file is a [`FormatError`]. The closure is computed from files
//! only (nothing is executed), searching like glibc's loader: `DT_RPATH`
//! (when there is no `DT_RUNPATH`), `DT_RUNPATH`, the directories of
//! `/etc/ld.so.conf` (in place of `ld.so.cache`), then the default dirs;
//! candidates of another class or machine are skipped as the loader does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Default library directories, searched last (Debian multiarch first).
pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The loader's configuration file.
pub const LD_SO_CONF: &str = "/etc/ld.so.conf";

/// How deep `include` lines in `ld.so.conf` may nest.
const MAX_CONF_DEPTH: usize = 16;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const SHT_NOBITS: u32 = 8;
const SHN_XINDEX: u16 = 0xffff;

/// Why bytes are not a usable ELF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// No ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// ELF magic, but a header, table or string is out of bounds or invalid.
    #[error("malformed ELF file: {0}")]
    Malformed(String),
}

/// Why an ELF file or its library closure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file is not ELF or is malformed.
    #[error("{}: {source}{hint}", path.display())]
    Format {
        path: PathBuf,
        source: FormatError,
        /// Extra advice, e.g. that the file is a script.
        hint: &'static str,
    },
    /// A `DT_NEEDED` library was found nowhere.
    #[error("{} needs {lib}, found in none of {searched:?}; install the package that provides it or add its directory to /etc/ld.so.conf", needed_by.display())]
    MissingLibrary {
        needed_by: PathBuf,
        lib: String,
        searched: Vec<PathBuf>,
    },
}

/// What the dynamic section says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_RPATH`, split at `:`.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH`, split at `:`.
    pub runpath: Vec<String>,
}

/// A parsed ELF header over borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    data: &'a [u8],
    is64: bool,
    little: bool,
    machine: u16,
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn malformed(why: impl Into<String>) -> FormatError {
    FormatError::Malformed(why.into())
}

impl<'a> Elf<'a> {
    /// Parses the ELF identification and header.
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, FormatError> {
        if data.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err(FormatError::NotElf);
        }
        let is64 = match data.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(malformed("unknown ELF class")),
        };
        let little = match data.get(5) {
            Some(1) => true,
            Some(2) => false,
            _ => return Err(malformed("unknown byte order")),
        };
        let mut elf = Elf {
            data,
            is64,
            little,
            machine: 0,
        };
        let header_len = if is64 { 64 } else { 52 };
        elf.bytes(0, header_len)?;
        elf.machine = elf.u16(18)?;
        Ok(elf)
    }

    /// `e_machine` (62 is x86-64).
    pub fn machine(&self) -> u16 {
        self.machine
    }

    /// True for ELFCLASS64.
    pub fn is_64(&self) -> bool {
        self.is64
    }

    /// True if `other` could be loaded into the same process (class, byte
    /// order and machine agree).
    pub fn compatible_with(&self, other: &Elf<'_>) -> bool {
        self.is64 == other.is64 && self.little == other.little && self.machine == other.machine
    }

    fn bytes(&self, off: u64, len: u64) -> Result<&'a [u8], FormatError> {
        let start = usize::try_from(off).map_err(|_| malformed("offset too large"))?;
        let len = usize::try_from(len).map_err(|_| malformed("size too large"))?;
        start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| malformed(format!("{len} bytes at offset {off} are past the end")))
    }

    fn u16(&self, off: u64) -> Result<u16, FormatError> {
        let b = self.bytes(off, 2)?;
        let b = [b[0], b[1]];
        Ok(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, off: u64) -> Result<u32, FormatError> {
        let b = self.bytes(off, 4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn u64(&self, off: u64) -> Result<u64, FormatError> {
        let b = self.bytes(off, 8)?;
        let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        Ok(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }

    /// A class-sized word (`Elf32_Addr`/`Elf64_Addr` and friends).
    fn word(&self, off: u64) -> Result<u64, FormatError> {
        if self.is64 {
            self.u64(off)
        } else {
            self.u32(off).map(u64::from)
        }
    }

    /// The NUL-terminated string at `off`.
    fn cstr(&self, off: u64) -> Result<&'a str, FormatError> {
        let rest = usize::try_from(off)
            .ok()
            .and_then(|start| self.data.get(start..))
            .ok_or_else(|| malformed(format!("string offset {off} is past the end")))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("unterminated string"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| malformed("string is not UTF-8"))
    }

    fn segments(&self) -> Result<Vec<Segment>, FormatError> {
        let (phoff, phentsize, phnum) = if self.is64 {
            (self.u64(32)?, self.u16(54)?, self.u16(56)?)
        } else {
            (u64::from(self.u32(28)?), self.u16(42)?, self.u16(44)?)
        };
        let min = if self.is64 { 56 } else { 32 };
        if phnum == 0 {
            return Ok(Vec::new());
        }
        if phentsize < min {
            return Err(malformed("program header entries too small"));
        }
        (0..u64::from(phnum))
            .map(|i| {
                let base = phoff
                    .checked_add(i * u64::from(phentsize))
                    .ok_or_else(|| malformed("program header offset overflows"))?;
                self.bytes(base, u64::from(phentsize))?;
                Ok(if self.is64 {
                    Segment {
                        kind: self.u32(base)?,
                        offset: self.u64(base + 8)?,
                        vaddr: self.u64(base + 16)?,
                        filesz: self.u64(base + 32)?,
                    }
                } else {
                    Segment {
                        kind: self.u32(base)?,
                        offset: u64::from(self.u32(base + 4)?),
                        vaddr: u64::from(self.u32(base + 8)?),
                        filesz: u64::from(self.u32(base + 16)?),
                    }
                })
            })
            .collect()
    }

    /// `PT_INTERP`: the program interpreter, `None` for a static file.
    pub fn interpreter(&self) -> Result<Option<&'a str>, FormatError> {
        for seg in self.segments()? {
            if seg.kind == PT_INTERP {
                let bytes = self.bytes(seg.offset, seg.filesz)?;
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                let s = std::str::from_utf8(&bytes[..end])
                    .map_err(|_| malformed("interpreter path is not UTF-8"))?;
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Maps a virtual address to a file offset through the `PT_LOAD`s.
    fn vaddr_to_offset(&self, segs: &[Segment], vaddr: u64) -> Result<u64, FormatError> {
        segs.iter()
            .filter(|s| s.kind == PT_LOAD)
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .and_then(|s| s.offset.checked_add(vaddr - s.vaddr))
            .ok_or_else(|| malformed(format!("address {vaddr:#x} is in no loaded segment")))
    }

    /// The dynamic section (`PT_DYNAMIC`); empty for a static file.
    pub fn dynamic(&self) -> Result<Dynamic, FormatError> {
        let segs = self.segments()?;
        let Some(dynseg) = segs.iter().find(|s| s.kind == PT_DYNAMIC) else {
            return Ok(Dynamic::default());
        };
        let entsize = if self.is64 { 16 } else { 8 };
        let mut entries = Vec::new();
        let mut strtab = None;
        for i in 0..dynseg.filesz / entsize {
            let off = dynseg
                .offset
                .checked_add(i * entsize)
                .ok_or_else(|| malformed("dynamic section offset overflows"))?;
            self.bytes(off, entsize)?;
            let tag = self.word(off)?;
            let val = self.word(off + entsize / 2)?;
            match tag {
                DT_NULL => break,
                DT_STRTAB => strtab = Some(val),
                DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
                _ => {}
            }
        }
        let mut dynamic = Dynamic::default();
        if entries.is_empty() {
            return Ok(dynamic);
        }
        let strtab = strtab.ok_or_else(|| malformed("dynamic section without DT_STRTAB"))?;
        let strtab = self.vaddr_to_offset(&segs, strtab)?;
        for (tag, val) in entries {
            let s = self.cstr(
                strtab
                    .checked_add(val)
                    .ok_or_else(|| malformed("string offset overflows"))?,
            )?;
            let split = || s.split(':').filter(|p| !p.is_empty()).map(String::from);
            match tag {
                DT_NEEDED => dynamic.needed.push(s.to_string()),
                DT_SONAME => dynamic.soname = Some(s.to_string()),
                DT_RPATH => dynamic.rpath.extend(split()),
                _ => dynamic.runpath.extend(split()),
            }
        }
        Ok(dynamic)
    }

    /// The contents of the first section called `name` (`None` if there is
    /// none or it occupies no file space).
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>, FormatError> {
        let (shoff, shentsize, shnum, shstrndx) = if self.is64 {
            (self.u64(40)?, self.u16(58)?, self.u16(60)?, self.u16(62)?)
        } else {
            (
                u64::from(self.u32(32)?),
                self.u16(46)?,
                self.u16(48)?,
                self.u16(50)?,
            )
        };
        if shoff == 0 {
            return Ok(None);
        }
        let min = if self.is64 { 64 } else { 40 };
        if shentsize < min {
            return Err(malformed("section header entries too small"));
        }
        let header = |i: u64| -> Result<(u32, u32, u64, u64, u32), FormatError> {
            let base = i
                .checked_mul(u64::from(shentsize))
                .and_then(|o| o.checked_add(shoff))
                .ok_or_else(|| malformed("section header offset overflows"))?;
            self.bytes(base, u64::from(shentsize))?;
            Ok(if self.is64 {
                (
                    self.u32(base)?,
                    self.u32(base + 4)?,
                    self.u64(base + 24)?,
                    self.u64(base + 32)?,
                    self.u32(base + 40)?,
                )
            } else {
                (
                    self.u32(base)?,
                    self.u32(base + 4)?,
                    u64::from(self.u32(base + 16)?),
                    u64::from(self.u32(base + 20)?),
                    self.u32(base + 24)?,
                )
            })
        };
        // Extended numbering keeps the real counts in section 0.
        let (_, _, _, size0, link0) = header(0)?;
        let count = if shnum == 0 { size0 } else { u64::from(shnum) };
        let strndx = if shstrndx == SHN_XINDEX {
            u64::from(link0)
        } else {
            u64::from(shstrndx)
        };
        if count > self.data.len() as u64 / u64::from(shentsize) {
            return Err(malformed("more section headers than the file can hold"));
        }
        let (_, _, str_off, _, _) = header(strndx)?;
        for i in 0..count {
            let (name_off, kind, offset, size, _) = header(i)?;
            let sh_name = self.cstr(
                str_off
                    .checked_add(u64::from(name_off))
                    .ok_or_else(|| malformed("section name offset overflows"))?,
            )?;
            if sh_name == name {
                if kind == SHT_NOBITS {
                    return Ok(None);
                }
                return self.bytes(offset, size).map(Some);
            }
        }
        Ok(None)
    }
}

/// Reads a whole file, mapping errors to [`ElfError::Read`].
fn read(path: &Path) -> Result<Vec<u8>, ElfError> {
    std::fs::read(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn format_error(path: &Path, data: &[u8], source: FormatError) -> ElfError {
    let hint = if data.starts_with(b"#!") {
        " (it is a script; pack its interpreter instead)"
    } else {
        ""
    };
    ElfError::Format {
        path: path.to_path_buf(),
        source,
        hint,
    }
}

/// The directories listed in a `ld.so.conf`-style file, `include` lines
/// followed (globs allowed, relative to the including file's directory), in
/// order, without duplicates. A missing top-level file gives no dirs.
pub fn ld_so_conf_dirs(conf: &Path) -> Result<Vec<PathBuf>, ElfError> {
    let mut dirs = Vec::new();
    match std::fs::read_to_string(conf) {
        Ok(text) => parse_conf(conf, &text, 0, &mut dirs)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ElfError::Read {
                path: conf.to_path_buf(),
                source,
            })
        }
    }
    Ok(dirs)
}

fn parse_conf(
    file: &Path,
    text: &str,
    depth: usize,
    dirs: &mut Vec<PathBuf>,
) -> Result<(), ElfError> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("include") => {
                if depth >= MAX_CONF_DEPTH {
                    continue;
                }
                for pattern in words {
                    let pattern = match Path::new(pattern) {
                        p if p.is_absolute() => p.to_path_buf(),
                        p => file.parent().unwrap_or(Path::new("/")).join(p),
                    };
                    for inc in glob(&pattern) {
                        // Unreadable includes are skipped, as ldconfig does.
                        if let Ok(text) = std::fs::read_to_string(&inc) {
                            parse_conf(&inc, &text, depth + 1, dirs)?;
                        }
                    }
                }
            }
            Some("hwcap") => {}
            _ => {
                // Old syntax allows `dir=TYPE`.
                let dir = PathBuf::from(line.split('=').next().unwrap_or(line).trim());
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
    }
    Ok(())
}

/// Expands `*` and `?` in any component of an absolute `pattern`; matches
/// are sorted like glob(3). A pattern without wildcards yields itself if it
/// exists.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    for comp in pattern.components().skip(1) {
        let comp = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &found {
            if !comp.contains(['*', '?']) {
                next.push(base.join(comp.as_ref()));
                continue;
            }
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') && wildcard_match(&comp, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    found.retain(|p| p.exists());
    found
}

/// Shell-style match of `*` (any run) and `?` (one char).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Where shared libraries are looked for. See the module docs for the order.
#[derive(Debug, Clone)]
pub struct LibrarySearch {
    /// Directories from `ld.so.conf`.
    pub conf_dirs: Vec<PathBuf>,
    /// The loader's built-in directories.
    pub default_dirs: Vec<PathBuf>,
}

impl LibrarySearch {
    /// The host's configuration: [`LD_SO_CONF`] and [`DEFAULT_LIB_DIRS`].
    pub fn host() -> Result<LibrarySearch, ElfError> {
        Ok(LibrarySearch {
            conf_dirs: ld_so_conf_dirs(Path::new(LD_SO_CONF))?,
            default_dirs: DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect(),
        })
    }

    /// Host paths of everything `exe` needs to run: its interpreter first
    /// (if any), then the libraries in breadth-first `DT_NEEDED` order, no
    /// duplicates, `exe` itself excluded. Empty for a static executable.
    pub fn closure(&self, exe: &Path) -> Result<Vec<PathBuf>, ElfError> {
        let data = read(exe)?;
        let elf = Elf::parse(&data).map_err(|e| format_error(exe, &data, e))?;
        let mut out = Vec::new();
        // name -> where it was found. The interpreter is loaded already: a
        // `DT_NEEDED` of its file name or soname (libc needs it) is it.
        let mut by_name: HashMap<String, PathBuf> = HashMap::new();
        if let Some(interp) = elf.interpreter().map_err(|e| format_error(exe, &data, e))? {
            let interp = PathBuf::from(interp);
            let mut names: Vec<String> = interp
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .into_iter()
                .collect();
            if let Ok(interp_data) = std::fs::read(&interp) {
                if let Some(soname) = Elf::parse(&interp_data)
                    .and_then(|e| e.dynamic())
                    .ok()
                    .and_then(|d| d.soname)
                {
                    names.push(soname);
                }
            }
            for name in names {
                by_name.insert(name, interp.clone());
            }
            out.push(interp);
        }
        let exe_dyn = elf.dynamic().map_err(|e| format_error(exe, &data, e))?;
        let exe_origin = origin_of(&exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf()));
        let exe_rpath = expand_origin(&exe_dyn.rpath, &exe_origin);

        let mut seen: HashSet<PathBuf> = out.iter().cloned().collect();
        let mut queue: VecDeque<(PathBuf, Dynamic)> = VecDeque::new();
        queue.push_back((exe.to_path_buf(), exe_dyn));
        while let Some((obj, dynamic)) = queue.pop_front() {
            let origin = origin_of(&obj);
            let mut dirs = Vec::new();
            if dynamic.runpath.is_empty() {
                dirs.extend(expand_origin(&dynamic.rpath, &origin));
                dirs.extend(exe_rpath.iter().cloned());
            }
            dirs.extend(expand_origin(&dynamic.runpath, &origin));
            dirs.extend(self.conf_dirs.iter().cloned());
            dirs.extend(self.default_dirs.iter().cloned());
            for name in &dynamic.needed {
                if by_name.contains_key(name) {
                    continue;
                }
                let found = if name.contains('/') {
                    Some(PathBuf::from(name))
                } else {
                    dirs.iter()
                        .map(|d| d.join(name))
                        .find(|cand| loadable_by(&elf, cand))
                };
                let Some(found) = found else {
                    return Err(ElfError::MissingLibrary {
                        needed_by: obj.clone(),
                        lib: name.clone(),
                        searched: dirs,
                    });
                };
                by_name.insert(name.clone(), found.clone());
                if !seen.insert(found.clone()) {
                    continue;
                }
                let lib_data = read(&found)?;
                let lib = Elf::parse(&lib_data).map_err(|e| format_error(&found, &lib_data, e))?;
                let lib_dyn = lib
                    .dynamic()
                    .map_err(|e| format_error(&found, &lib_data, e))?;
                out.push(found.clone());
                queue.push_back((found, lib_dyn));
            }
        }
        Ok(out)
    }
}

/// The library closure of `exe` with the host's search configuration.
pub fn library_closure(exe: &Path) -> Result<Vec<PathBuf>, ElfError> {
    LibrarySearch::host()?.closure(exe)
}

fn origin_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// Expands `$ORIGIN`/`${ORIGIN}`; entries with other tokens (`$LIB`,
/// `$PLATFORM`) or relative results are dropped, as they cannot be
/// reproduced faithfully without the loader.
fn expand_origin(entries: &[String], origin: &Path) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    entries
        .iter()
        .map(|e| e.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
        .filter(|e| !e.contains('$') && e.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// True if `cand` is an ELF file the loader of `exe` would accept.
fn loadable_by(exe: &Elf<'_>, cand: &Path) -> bool {
    let mut head = [0u8; 64];
    let Ok(mut file) = std::fs::File::open(cand) else {
        return false;
    };
    let mut len = 0;
    while len < head.len() {
        match file.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return false,
        }
    }
    Elf::parse(&head[..len]).is_ok_and(|lib| exe.compatible_with(&lib))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpio::tests::TempDir;

    /// A minimal little-endian ELF64 x86-64 file: header, `PT_LOAD`
    /// covering the file, optional `PT_INTERP` and `PT_DYNAMIC` with the
    /// given `DT_NEEDED`/`DT_RUNPATH`, and a section table with the given
    /// named sections.
    pub(crate) fn craft_elf(
        interp: Option<&str>,
        needed: &[&str],
        runpath: Option<&str>,
        sections: &[(&str, &[u8])],
    ) -> Vec<u8> {
        let dynamic = interp.is_some() || !needed.is_empty() || runpath.is_some();
        let phnum: u16 = 1 + u16::from(interp.is_some()) + u16::from(dynamic);
        let mut out = vec![0u8; 64 + 56 * phnum as usize];
        // Payload: interp string, dynstr, dynamic entries, sections, shstrtab.
        let interp_off = out.len() as u64;
        if let Some(i) = interp {
            out.extend_from_slice(i.as_bytes());
            out.push(0);
        }
        let dynstr_off = out.len() as u64;
        out.push(0);
        let mut dyn_entries: Vec<(u64, u64)> = Vec::new();
        for n in needed {
            dyn_entries.push((DT_NEEDED, out.len() as u64 - dynstr_off));
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        if let Some(r) = runpath {
            dyn_entries.push((DT_RUNPATH, out.len() as u64 - dynstr_off));
            out.extend_from_slice(r.as_bytes());
            out.push(0);
        }
        while out.len() % 8 != 0 {
            out.push(0);
        }
        // vaddr == file offset (one PT_LOAD at 0).
        dyn_entries.push((DT_STRTAB, dynstr_off));
        dyn_entries.push((DT_NULL, 0));
        let dyn_off = out.len() as u64;
        for (t, v) in &dyn_entries {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        let dyn_size = out.len() as u64 - dyn_off;
        let mut sec_offs = Vec::new();
        for (_, body) in sections {
            sec_offs.push((out.len() as u64, body.len() as u64));
            out.extend_from_slice(body);
        }
        let shstr_off = out.len() as u64;
        out.push(0);
        let mut name_offs = Vec::new();
        for (name, _) in sections
            .iter()
            .map(|(n, b)| (*n, *b))
            .chain([(".shstrtab", &[][..])])
        {
            name_offs.push(out.len() as u64 - shstr_off);
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        let shstr_size = out.len() as u64 - shstr_off;
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let shoff = out.len() as u64;
        let shnum = sections.len() as u16 + 2;
        out.extend_from_slice(&[0u8; 64]); // SHN_UNDEF
        let sh = |name: u64, kind: u32, off: u64, size: u64, out: &mut Vec<u8>| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&h);
        };
        for (i, (off, size)) in sec_offs.iter().enumerate() {
            sh(name_offs[i], 1, *off, *size, &mut out);
        }
        sh(
            name_offs[sections.len()],
            3,
            shstr_off,
            shstr_size,
            &mut out,
        );
        let file_len = out.len() as u64;

        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        out[60..62].copy_from_slice(&shnum.to_le_bytes());
        out[62..64].copy_from_slice(&(shnum - 1).to_le_bytes());
        let mut ph = |idx: usize, kind: u32, off: u64, size: u64| {
            let b = 64 + 56 * idx;
            out[b..b + 4].copy_from_slice(&kind.to_le_bytes());
            out[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            out[b + 16..b + 24].copy_from_slice(&off.to_le_bytes());
            out[b + 32..b + 40].copy_from_slice(&size.to_le_bytes());
            out[b + 40..b + 48].copy_from_slice(&size.to_le_bytes());
        };
        ph(0, PT_LOAD, 0, file_len);
        let mut idx = 1;
        if let Some(i) = interp {
            ph(idx, PT_INTERP, interp_off, i.len() as u64 + 1);
            idx += 1;
        }
        if dynamic {
            ph(idx, PT_DYNAMIC, dyn_off, dyn_size);
        }
        out
    }

    fn host_search() -> LibrarySearch {
        LibrarySearch::host().unwrap()
    }

    #[test]
    fn crafted_files_parse() {
        let data = craft_elf(
            Some("/lib/ld.so"),
            &["liba.so", "libb.so"],
            Some("$ORIGIN/../lib:/opt"),
            &[(".modinfo", b"name=x\0depends=a,b\0")],
        );
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.machine(), 62);
        assert_eq!(elf.interpreter().unwrap(), Some("/lib/ld.so"));
        let d = elf.dynamic().unwrap();
        assert_eq!(d.needed, ["liba.so", "libb.so"]);
        assert_eq!(d.runpath, ["$ORIGIN/../lib", "/opt"]);
        assert_eq!(
            elf.section(".modinfo").unwrap(),
            Some(&b"name=x\0depends=a,b\0"[..])
        );
        assert_eq!(elf.section(".nope").unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Elf::parse(b"").unwrap_err(), FormatError::NotElf);
        assert_eq!(Elf::parse(b"#!/bin/sh\n").unwrap_err(), FormatError::NotElf);
        assert!(matches!(
            Elf::parse(b"\x7fELF\x02\x01"),
            Err(FormatError::Malformed(_))
        ));
        let good = craft_elf(Some("/ld"), &["libc.so.6"], None, &[(".modinfo", b"x")]);
        // Every truncation and many single-byte corruptions must not panic.
        for len in 0..good.len() {
            if let Ok(elf) = Elf::parse(&good[..len]) {
                let _ = elf.interpreter();
                let _ = elf.dynamic();
                let _ = elf.section(".modinfo");
            }
        }
        for i in 0..good.len() - 8 {
            let mut bad = good.clone();
            bad[i..i + 8].fill(0xff);
            if let Ok(elf) = Elf::parse(&bad) {
                let _ = elf.interpreter();
                let _ = elf.dynamic();
                let _ = elf.section(".modinfo");
            }
        }
        for i in 0..good.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(elf) = Elf::parse(&bad) {
                    let _ = elf.interpreter();
                    let _ = elf.dynamic();
                    let _ = elf.section(".modinfo");
                }
            }
        }
    }

    #[test]
    fn static_executable_has_empty_closure() {
        let tmp = TempDir::new("elf-static");
        let exe = tmp.path().join("static");
        std::fs::write(&exe, craft_elf(None, &[], None, &[])).unwrap();
        assert_eq!(host_search().closure(&exe).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn non_elf_and_missing_library_are_clear_errors() {
        let tmp = TempDir::new("elf-errors");
        let script = tmp.path().join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let e = host_search().closure(&script).unwrap_err();
        assert!(e.to_string().contains("not an ELF file"), "{e}");
        assert!(e.to_string().contains("script"), "{e}");

        let exe = tmp.path().join("exe");
        std::fs::write(
            &exe,
            craft_elf(None, &["libkestrel-nonexistent.so.9"], None, &[]),
        )
        .unwrap();
        let e = host_search().closure(&exe).unwrap_err();
        assert!(
            matches!(&e, ElfError::MissingLibrary { lib, .. } if lib == "libkestrel-nonexistent.so.9"),
            "{e}"
        );
        assert!(matches!(
            host_search().closure(&tmp.path().join("missing")),
            Err(ElfError::Read { .. })
        ));
    }

    #[test]
    fn runpath_origin_is_searched_first_and_recursion_follows_libraries() {
        // exe needs liba (in $ORIGIN/lib); liba needs libb (next to it via
        // its own runpath) and libc (from the host).
        let tmp = TempDir::new("elf-runpath");
        let lib = tmp.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        std::fs::write(
            lib.join("liba.so"),
            craft_elf(None, &["libb.so", "libc.so.6"], Some("$ORIGIN"), &[]),
        )
        .unwrap();
        std::fs::write(
            lib.join("libb.so"),
            craft_elf(None, &["liba.so"], None, &[]),
        )
        .unwrap();
        // A same-named but unloadable (not ELF) file earlier in the path is
        // skipped, as the loader does.
        std::fs::write(tmp.path().join("liba.so"), b"junk").unwrap();
        let exe = tmp.path().join("exe");
        std::fs::write(
            &exe,
            craft_elf(
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["liba.so"],
                Some("$ORIGIN:$ORIGIN/lib"),
                &[],
            ),
        )
        .unwrap();
        let closure = host_search().closure(&exe).unwrap();
        assert_eq!(closure[0], PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(closure[1], lib.join("liba.so"));
        assert_eq!(closure[2], lib.join("libb.so"));
        assert!(closure[3].ends_with("libc.so.6"), "{closure:?}");
        assert_eq!(closure.len(), 4, "{closure:?}");
    }

    #[test]
    fn host_nproc_needs_libc_and_the_interpreter() {
        let closure = library_closure(Path::new("/usr/bin/nproc")).unwrap();
        assert!(
            closure[0].to_string_lossy().contains("ld-linux"),
            "{closure:?}"
        );
        assert!(
            closure.iter().any(|p| p.ends_with("libc.so.6")),
            "{closure:?}"
        );
        assert!(closure.iter().all(|p| p.exists()), "{closure:?}");
    }

    #[test]
    fn host_sh_resolves() {
        // /bin/sh is a symlink to dash on Debian; the closure follows it.
        let closure = library_closure(Path::new("/bin/sh")).unwrap();
        assert!(
            closure.iter().any(|p| p.ends_with("libc.so.6")),
            "{closure:?}"
        );
        let mut dedup = closure.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), closure.len());
    }

    #[test]
    fn ld_so_conf_follows_includes_and_globs() {
        let tmp = TempDir::new("elf-conf");
        let d = tmp.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(
            d.join("ld.so.conf"),
            "# comment\n/first\ninclude conf.d/*.conf\n/last # trailing\nhwcap 0 nosegneg\n",
        )
        .unwrap();
        std::fs::write(d.join("conf.d/b.conf"), "/b\n/first\n").unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "/a=libc6\ninclude ../extra.conf\n").unwrap();
        std::fs::write(d.join("extra.conf"), "/extra\n").unwrap();
        std::fs::write(d.join("conf.d/ignored.txt"), "/nope\n").unwrap();
        let dirs = ld_so_conf_dirs(&d.join("ld.so.conf")).unwrap();
        let want: Vec<PathBuf> = ["/first", "/a", "/extra", "/b", "/last"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
        // A file that includes itself terminates.
        std::fs::write(d.join("loop.conf"), "/loop\ninclude loop.conf\n").unwrap();
        let dirs = ld_so_conf_dirs(&d.join("loop.conf")).unwrap();
        assert_eq!(dirs, [PathBuf::from("/loop")]);
        assert!(ld_so_conf_dirs(&d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "libc.conf"));
        assert!(wildcard_match("a?c*", "abc"));
        assert!(!wildcard_match("*.conf", "libc.conf.bak"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("?", ""));
    }
}
