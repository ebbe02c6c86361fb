//! A kernel's symbols: the System.map and vmlinux that belong to an image,
//! addresses ↔ names ([`SymbolTable`]), and file:line from a vmlinux's
//! DWARF ([`DebugInfo`], through binutils' `addr2line`).
//!
//! Invariant: bad input never panics and never invents a name — a missing
//! or garbled System.map, a vmlinux without `.debug_info`, an ambiguous
//! name or a missing `addr2line` all mean "no answer" (`None`).
//!
//! Addresses are the link-time ones: right for PVH boots and kernels
//! without KASLR; a name printed by the kernel (`func+0x1a/0x40`) is
//! resolved by name, so it is right either way.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binutils program that maps addresses to file:line.
pub const ADDR2LINE: &str = "addr2line";

/// How far past a symbol an address may be and still be "in" it: past the
/// last symbol by more than this is not in the kernel.
const MAX_OFFSET: u64 = 1 << 20;

/// The System.map that belongs to `image`: for `<root>/boot/vmlinuz-<release>`
/// the `-dbg` package's `<root>/usr/lib/debug/boot/System.map-<release>`,
/// else Debian's `System.map-<release>` beside it; a `System.map` beside the
/// image (Debian 7.x layout), or at the top of a build tree
/// (`arch/x86/boot/bzImage`). Debian's own is a placeholder without text
/// symbols: [`SymbolSources::load`] then has no table.
pub fn find_system_map(image: &Path) -> Option<PathBuf> {
    let dir = image.parent()?;
    let name = image.file_name()?.to_str()?;
    let mut candidates = Vec::new();
    if let Some(release) = name.strip_prefix("vmlinuz-") {
        candidates.extend(debug_package_dir(dir).map(|d| d.join(format!("System.map-{release}"))));
        candidates.push(dir.join(format!("System.map-{release}")));
    }
    candidates.push(dir.join("System.map"));
    if let Some(tree) = build_tree_of(dir) {
        candidates.push(tree.join("System.map"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The vmlinux that belongs to `image`: the image itself when it is one,
/// `vmlinux-<release>` beside `vmlinuz-<release>` or in the `-dbg`
/// package's `usr/lib/debug/boot/`, a `vmlinux` beside the
/// image, or at the top of a build tree (`arch/x86/boot/bzImage`). Whether
/// it has debug info is [`DebugInfo::open`]'s business.
pub fn find_vmlinux(image: &Path) -> Option<PathBuf> {
    let dir = image.parent()?;
    let name = image.file_name()?.to_str()?;
    let mut candidates = Vec::new();
    if name == "vmlinux" || name.starts_with("vmlinux-") {
        candidates.push(image.to_owned());
    }
    if let Some(release) = name.strip_prefix("vmlinuz-") {
        candidates.push(dir.join(format!("vmlinux-{release}")));
        candidates.extend(debug_package_dir(dir).map(|d| d.join(format!("vmlinux-{release}"))));
    }
    candidates.push(dir.join("vmlinux"));
    if let Some(tree) = build_tree_of(dir) {
        candidates.push(tree.join("vmlinux"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// `<root>/usr/lib/debug/boot` for an image directory `<root>/boot`: where
/// Debian's `linux-image-<release>-dbg` puts the vmlinux with debug info
/// (and the real System.map: the one in `boot/` is a placeholder).
fn debug_package_dir(dir: &Path) -> Option<PathBuf> {
    dir.ends_with("boot")
        .then(|| dir.parent().map(|root| root.join("usr/lib/debug/boot")))
        .flatten()
}

/// `<tree>` for an image directory `<tree>/arch/x86/boot`.
fn build_tree_of(dir: &Path) -> Option<&Path> {
    dir.ends_with("arch/x86/boot")
        .then(|| dir.ancestors().nth(3))
        .flatten()
}

/// `addr` as `symbol+0xoff` from the System.map at `map` (text symbols).
pub fn symbolize(map: &Path, addr: u64) -> Option<String> {
    SymbolTable::load(map).ok()?.symbolize(addr)
}

/// One text symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    name: String,
}

/// The text symbols of a System.map (`T`, `t`, `W`, `w`), sorted by
/// address, with a name index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolTable {
    /// By address; equal addresses keep the file's order.
    by_addr: Vec<Symbol>,
    /// Indices into `by_addr`, sorted by name.
    by_name: Vec<usize>,
}

impl SymbolTable {
    /// Parses System.map text (`ADDR TYPE NAME` per line); other lines and
    /// other symbol types are skipped.
    pub fn parse(text: &str) -> SymbolTable {
        let mut by_addr = Vec::new();
        for line in text.lines() {
            let mut words = line.split_ascii_whitespace();
            let (Some(at), Some(kind), Some(name)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            if !matches!(kind, "T" | "t" | "W" | "w") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(at, 16) else {
                continue;
            };
            by_addr.push(Symbol {
                addr,
                name: name.to_owned(),
            });
        }
        by_addr.sort_by_key(|s| s.addr); // Stable: aliases keep file order.
        let mut by_name: Vec<usize> = (0..by_addr.len()).collect();
        by_name.sort_by(|&a, &b| by_addr[a].name.cmp(&by_addr[b].name));
        SymbolTable { by_addr, by_name }
    }

    /// Reads and parses the System.map at `path`.
    pub fn load(path: &Path) -> std::io::Result<SymbolTable> {
        let bytes = std::fs::read(path)?;
        Ok(SymbolTable::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// Number of text symbols.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether no text symbol was found.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The symbol `addr` is in and the offset into it (of aliases, the
    /// last in the file); `None` below every symbol or more than 1 MiB
    /// past the nearest.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.by_addr.partition_point(|s| s.addr <= addr);
        let s = self.by_addr.get(i.checked_sub(1)?)?;
        let off = addr - s.addr;
        (off < MAX_OFFSET).then_some((s.name.as_str(), off))
    }

    /// `addr` as `symbol+0xoff`.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.lookup(addr)
            .map(|(name, off)| format!("{name}+{off:#x}"))
    }

    /// The address of `name+offset`. A name several symbols share (static
    /// functions in different files) is resolved only when `size` (the
    /// `/0x40` the kernel prints) leaves exactly one that is large enough.
    pub fn address_of(&self, name: &str, offset: u64, size: Option<u64>) -> Option<u64> {
        let start = self
            .by_name
            .partition_point(|&i| self.by_addr[i].name.as_str() < name);
        let end = self
            .by_name
            .partition_point(|&i| self.by_addr[i].name.as_str() <= name);
        let candidates = &self.by_name[start..end];
        let base = match candidates {
            [] => return None,
            [one] => self.by_addr[*one].addr,
            many => {
                let size = size?;
                let mut fits = many
                    .iter()
                    .map(|&i| self.by_addr[i].addr)
                    .filter(|&a| self.extent(a).is_none_or(|e| e >= size));
                let first = fits.next()?;
                if fits.next().is_some() {
                    return None;
                }
                first
            }
        };
        if size.is_some_and(|s| offset >= s) {
            return None; // Past the end of the function the kernel named.
        }
        base.checked_add(offset)
    }

    /// Bytes from `addr` to the next higher symbol (`None` for the last).
    fn extent(&self, addr: u64) -> Option<u64> {
        let i = self.by_addr.partition_point(|s| s.addr <= addr);
        self.by_addr.get(i).map(|next| next.addr - addr)
    }
}

/// One source position of an address: the function and `file:line`.
/// Inlined code gives several, innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The function (`??` when addr2line does not know it).
    pub function: String,
    /// `file:line`, without addr2line's `(discriminator N)`.
    pub file_line: String,
}

/// A vmlinux with DWARF line information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugInfo {
    vmlinux: PathBuf,
    /// The source tree's top directory, with a trailing `/`: stripped from
    /// the file names addr2line prints (an `O=` build names sources by
    /// absolute path).
    tree: Option<String>,
}

impl DebugInfo {
    /// `Some` when `vmlinux` is a 64-bit little-endian ELF file with a
    /// `.debug_info` section.
    pub fn open(vmlinux: &Path) -> Option<DebugInfo> {
        has_debug_info(vmlinux).then(|| DebugInfo {
            vmlinux: vmlinux.to_owned(),
            tree: source_tree(vmlinux),
        })
    }

    /// The vmlinux.
    pub fn path(&self) -> &Path {
        &self.vmlinux
    }

    /// The source positions of each address, from one `addr2line -a -f -i`
    /// run; an address addr2line cannot place (or every address, when
    /// addr2line is missing or fails) gets an empty list.
    pub fn locate(&self, addrs: &[u64]) -> Vec<Vec<Location>> {
        let mut found = vec![Vec::new(); addrs.len()];
        if addrs.is_empty() {
            return found;
        }
        let output = Command::new(ADDR2LINE)
            .arg("-e")
            .arg(&self.vmlinux)
            .args(["-a", "-f", "-i"])
            .args(addrs.iter().map(|a| format!("{a:#x}")))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let Ok(output) = output else {
            return found;
        };
        if !output.status.success() {
            return found;
        }
        let mut groups = parse_addr2line(&String::from_utf8_lossy(&output.stdout));
        if let Some(tree) = &self.tree {
            for (_, locations) in &mut groups {
                for l in locations {
                    if let Some(rel) = l.file_line.strip_prefix(tree.as_str()) {
                        l.file_line = rel.to_owned();
                    }
                }
            }
        }
        // One group per address, in order; from the first that does not fit
        // the output is not what we think it is.
        for ((slot, &addr), (at, locations)) in found.iter_mut().zip(addrs).zip(groups) {
            if at != addr {
                break;
            }
            *slot = locations;
        }
        found
    }
}

/// The source tree a vmlinux was built from: an `O=` build directory's
/// `source` link, else the vmlinux's own directory when it holds a kernel
/// tree (`Kconfig` and `Makefile`), as `/dir/`.
fn source_tree(vmlinux: &Path) -> Option<String> {
    let dir = vmlinux.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let tree = std::fs::canonicalize(dir.join("source"))
        .ok()
        .filter(|t| t.is_dir())
        .or_else(|| {
            (dir.join("Kconfig").is_file() && dir.join("Makefile").is_file())
                .then(|| std::fs::canonicalize(dir).ok())
                .flatten()
        })?;
    let mut tree = tree.to_str()?.to_owned();
    if !tree.ends_with('/') {
        tree.push('/');
    }
    Some(tree)
}

/// `addr2line -a -f -i` output: per address a `0x…` line, then pairs of
/// function and `file:line` lines. Unknown positions (`??:0`, `??:?`) are
/// dropped.
fn parse_addr2line(text: &str) -> Vec<(u64, Vec<Location>)> {
    let mut groups: Vec<(u64, Vec<Location>)> = Vec::new();
    let mut function: Option<&str> = None;
    for line in text.lines() {
        if let Some(hex) = line.strip_prefix("0x") {
            let Ok(addr) = u64::from_str_radix(hex.trim(), 16) else {
                return groups;
            };
            groups.push((addr, Vec::new()));
            function = None;
            continue;
        }
        let Some((_, locations)) = groups.last_mut() else {
            continue;
        };
        match function.take() {
            None => function = Some(line.trim()),
            Some(f) => {
                let place = line.split(" (discriminator").next().unwrap_or(line).trim();
                let place = place.strip_prefix("./").unwrap_or(place);
                if !place.starts_with("??") && !place.ends_with(":0") && !place.ends_with(":?") {
                    locations.push(Location {
                        function: f.to_owned(),
                        file_line: place.to_owned(),
                    });
                }
            }
        }
    }
    groups
}

/// Whether `path` is an ELF64 LE file with a `.debug_info` section (the
/// section headers and their name table only are read).
fn has_debug_info(path: &Path) -> bool {
    section_names(path).is_some_and(|names| names.iter().any(|n| n == ".debug_info"))
}

/// Largest section-name table read.
const MAX_SHSTRTAB: u64 = 1 << 20;

fn section_names(path: &Path) -> Option<Vec<String>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(&eh, 0x28)?;
    let shentsize = usize::from(u16_at(&eh, 0x3a)?);
    let shnum = usize::from(u16_at(&eh, 0x3c)?);
    let shstrndx = usize::from(u16_at(&eh, 0x3e)?);
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum {
        return None;
    }
    let mut table = vec![0u8; shentsize * shnum];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    let header = |i: usize| table.get(i * shentsize..(i + 1) * shentsize);
    let strtab = header(shstrndx)?;
    let (str_off, str_size) = (u64_at(strtab, 0x18)?, u64_at(strtab, 0x20)?);
    if str_size > MAX_SHSTRTAB {
        return None;
    }
    let mut names = vec![0u8; usize::try_from(str_size).ok()?];
    f.seek(SeekFrom::Start(str_off)).ok()?;
    f.read_exact(&mut names).ok()?;
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let at = usize::try_from(u32_at(header(i)?, 0)?).ok()?;
        let rest = names.get(at..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Some(out)
}

/// Where a kernel's symbols are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolSources {
    /// Its System.map.
    pub system_map: Option<PathBuf>,
    /// Its vmlinux (with or without debug info).
    pub vmlinux: Option<PathBuf>,
}

impl SymbolSources {
    /// The System.map and vmlinux found for the image at `image`.
    pub fn for_image(image: &Path) -> SymbolSources {
        SymbolSources {
            system_map: find_system_map(image),
            vmlinux: find_vmlinux(image),
        }
    }

    /// Reads them: an unreadable map or a vmlinux without debug info is
    /// simply absent.
    pub fn load(&self) -> KernelSymbols {
        KernelSymbols {
            table: self
                .system_map
                .as_deref()
                .and_then(|m| SymbolTable::load(m).ok())
                .filter(|t| !t.is_empty()),
            debug: self.vmlinux.as_deref().and_then(DebugInfo::open),
        }
    }
}

/// A kernel's loaded symbols.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSymbols {
    /// From the System.map.
    pub table: Option<SymbolTable>,
    /// From a vmlinux with debug info.
    pub debug: Option<DebugInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const MAP: &str = "ffffffff81000000 T _text\n\
                       ffffffff81001000 T start_kernel\n\
                       ffffffff81001800 t helper\n\
                       ffffffff81002000 t cleanup\n\
                       ffffffff81002010 t other\n\
                       ffffffff81003000 t cleanup\n\
                       ffffffff81003100 t last\n\
                       ffffffff82000000 D some_data\n\
                       garbage line\n\
                       zzzz T bad_address\n";

    #[test]
    fn fault_addresses_are_named_from_the_system_map() {
        let t = SymbolTable::parse(MAP);
        assert_eq!(
            t.symbolize(0xffff_ffff_8100_1010).as_deref(),
            Some("start_kernel+0x10")
        );
        assert_eq!(
            t.symbolize(0xffff_ffff_8100_1800).as_deref(),
            Some("helper+0x0")
        );
        assert_eq!(t.symbolize(0x1000), None, "below every symbol");
        assert_eq!(
            t.symbolize(0xffff_ffff_9000_0000),
            None,
            "far past the text"
        );
        assert_eq!(t.len(), 7, "data, garbage and bad addresses are skipped");
        assert_eq!(SymbolTable::parse("\0\u{fffd} x\n").symbolize(5), None);
    }

    #[test]
    fn names_resolve_to_addresses() {
        let t = SymbolTable::parse(MAP);
        assert_eq!(
            t.address_of("start_kernel", 0x10, Some(0x800)),
            Some(0xffff_ffff_8100_1010)
        );
        assert_eq!(t.address_of("helper", 4, None), Some(0xffff_ffff_8100_1804));
        assert_eq!(t.address_of("nope", 0, None), None);
        assert_eq!(
            t.address_of("helper", 0x900, Some(0x800)),
            None,
            "past its size"
        );
        // Two `cleanup`s: 0x10 and 0x100 bytes; only the size tells them apart.
        assert_eq!(t.address_of("cleanup", 1, None), None);
        assert_eq!(
            t.address_of("cleanup", 0x20, Some(0x80)),
            Some(0xffff_ffff_8100_3020)
        );
        assert_eq!(t.address_of("cleanup", 1, Some(0x8)), None, "both fit");
    }

    #[test]
    fn maps_and_vmlinux_are_found_beside_the_image() {
        let dir = TempDir::new("symbols");
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        std::fs::write(boot.join("vmlinuz-6.1.0-x"), b"").unwrap();
        std::fs::write(boot.join("System.map-6.1.0-x"), MAP).unwrap();
        assert_eq!(
            find_system_map(&boot.join("vmlinuz-6.1.0-x")),
            Some(boot.join("System.map-6.1.0-x"))
        );
        assert_eq!(find_vmlinux(&boot.join("vmlinuz-6.1.0-x")), None);
        std::fs::write(boot.join("vmlinux-6.1.0-x"), b"").unwrap();
        assert_eq!(
            find_vmlinux(&boot.join("vmlinuz-6.1.0-x")),
            Some(boot.join("vmlinux-6.1.0-x"))
        );
        // Debian's placeholder map loses to the -dbg package's files.
        let dbg = dir.path().join("usr/lib/debug/boot");
        std::fs::create_dir_all(&dbg).unwrap();
        std::fs::write(dbg.join("System.map-6.1.0-x"), MAP).unwrap();
        std::fs::write(dbg.join("vmlinux-6.1.0-x"), b"").unwrap();
        std::fs::remove_file(boot.join("vmlinux-6.1.0-x")).unwrap();
        std::fs::write(
            boot.join("System.map-6.1.0-x"),
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
        )
        .unwrap();
        let image = boot.join("vmlinuz-6.1.0-x");
        assert_eq!(
            find_system_map(&image),
            Some(dbg.join("System.map-6.1.0-x"))
        );
        assert_eq!(find_vmlinux(&image), Some(dbg.join("vmlinux-6.1.0-x")));
        std::fs::remove_dir_all(dir.path().join("usr")).unwrap();
        assert_eq!(
            SymbolSources::for_image(&image).load().table,
            None,
            "the placeholder has no text symbols"
        );

        let tree = dir.path().join("linux");
        std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
        std::fs::write(tree.join("System.map"), MAP).unwrap();
        std::fs::write(tree.join("vmlinux"), b"").unwrap();
        let bz = tree.join("arch/x86/boot/bzImage");
        assert_eq!(find_system_map(&bz), Some(tree.join("System.map")));
        assert_eq!(find_vmlinux(&bz), Some(tree.join("vmlinux")));
        assert_eq!(
            find_vmlinux(&tree.join("vmlinux")),
            Some(tree.join("vmlinux"))
        );
        assert_eq!(find_system_map(&dir.path().join("nothing/here")), None);
        assert_eq!(find_vmlinux(Path::new("/")), None);

        let sources = SymbolSources::for_image(&bz);
        let loaded = sources.load();
        assert_eq!(loaded.table.map(|t| t.len()), Some(7));
        assert_eq!(loaded.debug, None, "an empty file has no debug info");
        assert_eq!(
            symbolize(&tree.join("System.map"), 0xffff_ffff_8100_1001).as_deref(),
            Some("start_kernel+0x1")
        );
        std::fs::write(tree.join("System.map"), b"\xff\xfe garbage").unwrap();
        assert_eq!(sources.load().table, None, "a garbled map is no map");
    }

    #[test]
    fn file_names_are_relative_to_the_source_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("linux");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let canon = std::fs::canonicalize(&src).unwrap();
        let want = Some(format!("{}/", canon.display()));
        // No tree: a vmlinux elsewhere keeps addr2line's names.
        assert_eq!(source_tree(&out.join("vmlinux")), None);
        // In-tree build.
        std::fs::write(src.join("Kconfig"), b"").unwrap();
        std::fs::write(src.join("Makefile"), b"").unwrap();
        assert_eq!(source_tree(&src.join("vmlinux")), want);
        // O= build: the `source` link.
        std::os::unix::fs::symlink(&src, out.join("source")).unwrap();
        assert_eq!(source_tree(&out.join("vmlinux")), want);
    }

    #[test]
    fn addr2line_output_is_grouped_per_address() {
        let text = "0x0000000000401136\nleaf\n/src/t.c:3\n\
                    0xffffffff81234567\ninner\n./include/x.h:10 (discriminator 2)\nouter\nfs/y.c:20\n\
                    0x0000000000000010\n??\n??:0\n";
        let g = parse_addr2line(text);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].0, 0x401136);
        assert_eq!(g[0].1[0].file_line, "/src/t.c:3");
        assert_eq!(
            g[1].1,
            [
                Location {
                    function: "inner".into(),
                    file_line: "include/x.h:10".into()
                },
                Location {
                    function: "outer".into(),
                    file_line: "fs/y.c:20".into()
                }
            ]
        );
        assert!(g[2].1.is_empty());
        assert!(parse_addr2line("junk\n0xzz\n").is_empty());
    }

    #[test]
    fn only_elf_files_with_dwarf_have_debug_info() {
        let dir = TempDir::new("dwarf");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"\x7fELF\x02\x01 and then nothing sensible").unwrap();
        assert_eq!(DebugInfo::open(&junk), None);
        assert_eq!(DebugInfo::open(&dir.path().join("missing")), None);
        // Truncated section headers: no panic, no answer.
        let mut eh = vec![0u8; 64];
        eh[..6].copy_from_slice(b"\x7fELF\x02\x01");
        eh[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        eh[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        eh[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        eh[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(&junk, &eh).unwrap();
        assert_eq!(DebugInfo::open(&junk), None);
    }
}
