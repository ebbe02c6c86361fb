//! The splat behind a forbidden kernel-log line: the line and the report
//! lines that follow it ([`capture`]), each stack frame parsed
//! ([`parse_frame`]) and symbolized ([`symbolize`]) — raw addresses get
//! `symbol+0xoff` from the System.map, frames in vmlinux (not a module) get
//! ` (file:line)` when the kernel's vmlinux has debug info.
//!
//! Invariants: a trace is at most [`MAX_LINES`] lines of at most
//! [`MAX_LINE_CHARS`] characters (plus what symbolizing appends); missing
//! or wrong symbols leave a frame as the kernel printed it, never panic.

use std::sync::LazyLock;

use kestrel_kernels::symbols::KernelSymbols;
use regex::Regex;

/// Most lines a trace keeps.
pub const MAX_LINES: usize = 40;
/// Most characters kept of one kernel-log line.
pub const MAX_LINE_CHARS: usize = 200;
/// Most lines of a splat looked at (register dumps are read, not kept).
const MAX_SCANNED: usize = 120;

/// Lowest kernel address on x86-64: anything below is user space (a
/// `RIP: 0033:0x7f…` line).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// `[    1.234567] ` and an optional `[  T123]` caller id.
static TIMESTAMP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[ *[0-9]+\.[0-9]+\](\[ *[TC][0-9]+\])? ?").unwrap());

/// Register-dump lines (`RAX: 0000…`, `FS:  0000…`, `PKRU: 5555…`) and the
/// code bytes: part of a splat, not kept in the trace. `RIP:` is kept.
static REGISTERS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(Code: |(RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|DR6|PKRU): +[0-9a-f]{4})")
        .unwrap()
});

/// Unindented lines that continue a splat (x86-64 WARN/BUG/Oops, KASAN,
/// UBSAN, lockdep, NMI backtraces).
static CONTINUES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(Modules linked in:|CPU: |Hardware name:|Workqueue:|RIP: |Call Trace:|Stack:",
        r"|irq event stamp:|hardirqs last|softirqs last|#PF: |PGD |Oops|invalid opcode:",
        r"|general protection fault|BUG: |WARNING: |kernel BUG at|UBSAN: |KASAN",
        r"|Tainted: |note: |NMI backtrace for cpu|Sending NMI from CPU|=+$|-+$",
        r"|(Read|Write) of size|Allocated by task|Freed by task|The buggy address",
        r"|Memory state around|[ >]?[0-9a-f]{16}: |stack backtrace:|other info that might",
        r"|the existing dependency chain|-> #[0-9]|Possible unsafe locking scenario",
        r"|\*\*\* DEADLOCK \*\*\*|[0-9]+ locks? held by|no locks held|Chain exists of:",
        r"|\S+ is trying to acquire|but task is already holding|which lock already depends",
        r"|<(/?)(TASK|IRQ|NMI|SOFTIRQ|#DB)>)"
    ))
    .unwrap()
});

/// `name+0xoff/0xsize [module]` as `%pS` prints a frame.
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<name>[A-Za-z_.$][A-Za-z0-9_.$]*)\+0x(?P<off>[0-9a-f]+)",
        r"(/0x(?P<size>[0-9a-f]+))?( \[(?P<module>[A-Za-z0-9_-]+)[^\]]*\])?\s*$"
    ))
    .unwrap()
});

/// A raw address: `0xffffffff81234567` (no kallsyms) or `[<ffffffff81234567>]`.
static RAW: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(0x(?P<hex>[0-9a-f]{8,16})|\[<(?P<bracketed>[0-9a-f]{8,16})>\])").unwrap()
});

/// The log line without its printk timestamp.
pub fn strip_timestamp(line: &str) -> &str {
    match TIMESTAMP.find(line) {
        Some(m) => &line[m.end()..],
        None => line,
    }
}

/// The splat that starts at line `first` of `log` (timestamps removed): the
/// line itself, then every line that continues the report, up to and with
/// `---[ end trace`; it ends at a line that is another message, or after
/// [`MAX_LINES`] kept lines. Register dumps and `Code:` are skipped.
pub fn capture(log: &str, first: usize) -> Vec<String> {
    let mut lines = log.lines().skip(first);
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let mut out = vec![bounded(strip_timestamp(head).trim())];
    for raw in lines.take(MAX_SCANNED) {
        if out.len() >= MAX_LINES {
            break;
        }
        let line = strip_timestamp(raw).trim_end();
        if line.starts_with("---[ end ") {
            out.push(bounded(line));
            break;
        }
        if REGISTERS.is_match(line) {
            continue;
        }
        let continues =
            line.is_empty() || line.starts_with([' ', '\t']) || CONTINUES.is_match(line);
        if !continues {
            break;
        }
        out.push(bounded(line));
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out
}

/// `line` cut to [`MAX_LINE_CHARS`] characters (with `…` when cut).
fn bounded(line: &str) -> String {
    if line.chars().count() <= MAX_LINE_CHARS {
        return line.to_owned();
    }
    let mut s: String = line.chars().take(MAX_LINE_CHARS).collect();
    s.push('…');
    s
}

/// What a frame points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `name+0xoff/0xsize`, in a module when `module` is set.
    Named {
        /// The symbol.
        name: String,
        /// Offset into it.
        offset: u64,
        /// Its size, when printed.
        size: Option<u64>,
        /// `[module]`.
        module: Option<String>,
    },
    /// A bare address (a kernel without kallsyms).
    Raw(u64),
}

/// One stack frame of a trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `RIP:` — the faulting instruction itself; otherwise a return address.
    pub rip: bool,
    /// `? ` — a stale value the unwinder found on the stack.
    pub unreliable: bool,
    /// What it points at.
    pub target: Target,
}

/// Parses a trace line as a frame: ` func+0x1a/0x40 [module]`,
/// ` ? func+0x…`, `RIP: 0010:func+0x12/0x30`, ` [<ffffffff81234567>] …`,
/// ` 0xffffffff81234567`. `None` for every other line.
pub fn parse_frame(line: &str) -> Option<Frame> {
    let line = strip_timestamp(line);
    let (rip, rest) = match line.strip_prefix("RIP: ") {
        Some(r) => (
            true,
            r.get(5..).filter(|_| r.as_bytes().get(4) == Some(&b':'))?,
        ),
        None => (false, line.trim_start()),
    };
    let (unreliable, rest) = match rest.strip_prefix("? ") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if let Some(c) = NAMED.captures(rest) {
        let hex = |n: &str| {
            c.name(n)
                .and_then(|m| u64::from_str_radix(m.as_str(), 16).ok())
        };
        return Some(Frame {
            rip,
            unreliable,
            target: Target::Named {
                name: c["name"].to_owned(),
                offset: hex("off")?,
                size: hex("size"),
                module: c.name("module").map(|m| m.as_str().to_owned()),
            },
        });
    }
    let c = RAW.captures(rest)?;
    let hex = c.name("hex").or_else(|| c.name("bracketed"))?;
    let addr = u64::from_str_radix(hex.as_str(), 16).ok()?;
    // `[<addr>] name+0x…` (old kernels): the name is as good as the address.
    let after = rest[c.get(0)?.end()..].trim_start();
    let after = after.strip_prefix("? ").unwrap_or(after);
    if let Some(named) = parse_frame(&format!(" {after}")).filter(|_| !after.is_empty()) {
        if matches!(named.target, Target::Named { .. }) {
            return Some(Frame {
                rip,
                unreliable,
                target: named.target,
            });
        }
    }
    (addr >= KERNEL_SPACE).then_some(Frame {
        rip,
        unreliable,
        target: Target::Raw(addr),
    })
}

/// `lines` with each frame annotated: a raw address gets its `symbol+0xoff`
/// from the System.map; a frame in vmlinux gets ` (file:line)` (innermost
/// inlined position first, `file:line < file:line`) when vmlinux has debug
/// info. All addresses go to one `addr2line` run.
pub fn symbolize(lines: &[String], symbols: &KernelSymbols) -> Vec<String> {
    let mut out: Vec<String> = lines.to_vec();
    let mut queries: Vec<(usize, u64)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(frame) = parse_frame(line) else {
            continue;
        };
        let table = symbols.table.as_ref();
        let (addr, offset) = match &frame.target {
            Target::Raw(addr) => {
                let Some((name, off)) = table.and_then(|t| t.lookup(*addr)) else {
                    continue;
                };
                out[i].push_str(&format!(" {name}+{off:#x}"));
                (*addr, off)
            }
            Target::Named {
                module: Some(_), ..
            } => continue,
            Target::Named {
                name,
                offset,
                size,
                module: None,
            } => match table.and_then(|t| t.address_of(name, *offset, *size)) {
                Some(a) => (a, *offset),
                None => continue,
            },
        };
        // A return address is one past its call: the call's line is wanted.
        let at = if !frame.rip && offset > 0 {
            addr - 1
        } else {
            addr
        };
        queries.push((i, at));
    }
    let Some(debug) = &symbols.debug else {
        return out;
    };
    let addrs: Vec<u64> = queries.iter().map(|&(_, a)| a).collect();
    for ((i, _), locations) in queries.iter().zip(debug.locate(&addrs)) {
        let Some((outer, inner)) = locations.split_last() else {
            continue;
        };
        let mut place = String::new();
        for l in inner {
            place.push_str(&l.file_line);
            place.push_str(" < ");
        }
        place.push_str(&outer.file_line);
        out[*i].push_str(&format!(" ({place})"));
    }
    out
}

/// The splat at line `first` of `log`, symbolized when `symbols` is given.
pub fn trace(log: &str, first: usize, symbols: Option<&KernelSymbols>) -> Vec<String> {
    let lines = capture(log, first);
    match symbols {
        Some(s) => symbolize(&lines, s),
        None => lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_kernels::symbols::{DebugInfo, SymbolTable};
    use std::path::Path;
    use std::process::Command;

    /// A `WARN_ON` in a module on Debian 6.1 (`loop`), then the next message.
    const WARN_61: &str = "\
[   12.345600] loop: module loaded
[   12.345670] ------------[ cut here ]------------
[   12.345678] WARNING: CPU: 0 PID: 215 at drivers/block/loop.c:1034 loop_configure+0x1f6/0x520 [loop]
[   12.345690] Modules linked in: loop(+) virtio_console fuse
[   12.345700] CPU: 0 PID: 215 Comm: sh Not tainted 6.1.0-27-cloud-amd64 #1  Debian 6.1.115-1
[   12.345710] Hardware name: Kestrel VM, BIOS none 01/01/2024
[   12.345720] RIP: 0010:loop_configure+0x1f6/0x520 [loop]
[   12.345730] Code: 48 8b 45 00 48 85 c0 74 0b <0f> 0b 48 c7 c0 ea ff ff ff eb 9a
[   12.345740] RSP: 0018:ffffb5a2c0197d28 EFLAGS: 00010246
[   12.345750] RAX: 0000000000000000 RBX: ffff9c0a41a3c000 RCX: 0000000000000000
[   12.345760] RDX: 0000000000000001 RSI: ffffffff8a2f1b40 RDI: ffff9c0a41a3c000
[   12.345770] RBP: ffff9c0a40f6e800 R08: 0000000000000000 R09: 0000000000000000
[   12.345780] R10: 0000000000000000 R11: 0000000000000000 R12: 0000000000000000
[   12.345790] R13: ffff9c0a41a3c000 R14: 0000000000000000 R15: 0000000000000000
[   12.345800] FS:  00007f3c0a1b3740(0000) GS:ffff9c0a7dc00000(0000) knlGS:0000000000000000
[   12.345810] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[   12.345820] CR2: 000055d1e8c3e0a8 CR3: 0000000001a3e000 CR4: 00000000003506f0
[   12.345830] Call Trace:
[   12.345840]  <TASK>
[   12.345850]  ? __warn+0x7d/0xc0
[   12.345860]  ? loop_configure+0x1f6/0x520 [loop]
[   12.345870]  ? report_bug+0xe2/0x150
[   12.345880]  ? handle_bug+0x41/0x70
[   12.345890]  lo_ioctl+0x3c5/0x7f0 [loop]
[   12.345900]  blkdev_ioctl+0x12a/0x270
[   12.345910]  __x64_sys_ioctl+0x8d/0xd0
[   12.345920]  do_syscall_64+0x55/0xb0
[   12.345930]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   12.345940] RIP: 0033:0x7f3c0a2a3c5b
[   12.345950] Code: 00 48 89 44 24 18 31 c0 48 8d 44 24 60 c7 04 24 10 00 00 00 b8 10
[   12.345960] RSP: 002b:00007ffd5d8a7a08 EFLAGS: 00000246 ORIG_RAX: 0000000000000010
[   12.345970] RAX: ffffffffffffffda RBX: 0000000000000003 RCX: 00007f3c0a2a3c5b
[   12.345980]  </TASK>
[   12.345990] ---[ end trace 0000000000000000 ]---
[   12.346000] loop0: detected capacity change from 0 to 8
";

    /// A NULL dereference (`echo c > /proc/sysrq-trigger`) on 6.1: BUG,
    /// Oops, frames, and the trailing `Modules linked in`/`CR2` lines.
    const OOPS_61: &str = "\
[   20.100000] sysrq: Trigger a crash
[   20.100001] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   20.100002] #PF: supervisor write access in kernel mode
[   20.100003] #PF: error_code(0x0002) - not-present page
[   20.100004] PGD 0 P4D 0
[   20.100005] Oops: 0002 [#1] PREEMPT SMP NOPTI
[   20.100006] CPU: 0 PID: 230 Comm: sh Not tainted 6.1.0-27-cloud-amd64 #1  Debian 6.1.115-1
[   20.100007] Hardware name: Kestrel VM, BIOS none 01/01/2024
[   20.100008] RIP: 0010:sysrq_handle_crash+0x16/0x20
[   20.100009] Code: 85 ff 74 0b 0f b6 05 cb 5b 5e 01 84 c0 74 06 c3 cc cc cc cc 90 0f 1f 44 00 00 c7 05 b5 ab 5d 01 01 00 00 00 0f ae f8 <c6> 04 25 00 00 00 00 01
[   20.100010] RSP: 0018:ffffb5a2c0197e48 EFLAGS: 00010246
[   20.100011] Call Trace:
[   20.100012]  <TASK>
[   20.100013]  ? __die_body.cold+0x1a/0x1f
[   20.100014]  ? page_fault_oops+0xd2/0x2b0
[   20.100015]  ? exc_page_fault+0x70/0x170
[   20.100016]  ? asm_exc_page_fault+0x22/0x30
[   20.100017]  ? sysrq_handle_crash+0x16/0x20
[   20.100018]  __handle_sysrq.cold+0x43/0x11b
[   20.100019]  write_sysrq_trigger+0x24/0x40
[   20.100020]  proc_reg_write+0x55/0xa0
[   20.100021]  vfs_write+0xc6/0x3f0
[   20.100022]  ksys_write+0x6b/0xf0
[   20.100023]  do_syscall_64+0x55/0xb0
[   20.100024]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   20.100025]  </TASK>
[   20.100026] Modules linked in: fuse
[   20.100027] CR2: 0000000000000000
[   20.100028] ---[ end trace 0000000000000000 ]---
";

    /// `echo l > /proc/sysrq-trigger` at loglevel=5: only the
    /// `KERN_DEFAULT` part shows, from `CPU:` on; the next message ends it.
    const SYSRQ_L_61: &str = "\
[    3.500000] CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-27-cloud-amd64 #1  Debian 6.1.115-1
[    3.500001] Hardware name: Kestrel VM, BIOS none 01/01/2024
[    3.500002] Call Trace:
[    3.500003]  <TASK>
[    3.500004]  dump_stack_lvl+0x44/0x5c
[    3.500005]  nmi_cpu_backtrace.cold+0x30/0x70
[    3.500006]  ? lapic_can_unplug_cpu+0x80/0x80
[    3.500007]  nmi_trigger_cpumask_backtrace+0x11b/0x120
[    3.500008]  __handle_sysrq.cold+0x43/0x11b
[    3.500009]  write_sysrq_trigger+0x24/0x40
[    3.500010]  </TASK>
[    3.500011] kestrel-init: command exited with status 0
";

    fn index_of(log: &str, needle: &str) -> usize {
        log.lines().position(|l| l.contains(needle)).unwrap()
    }

    #[test]
    fn a_warn_splat_is_captured_to_its_end_marker() {
        let t = capture(WARN_61, index_of(WARN_61, "WARNING:"));
        assert_eq!(
            t.first().map(String::as_str),
            Some("WARNING: CPU: 0 PID: 215 at drivers/block/loop.c:1034 loop_configure+0x1f6/0x520 [loop]")
        );
        assert_eq!(
            t.last().map(String::as_str),
            Some("---[ end trace 0000000000000000 ]---")
        );
        assert!(t.contains(&"Call Trace:".to_owned()), "{t:#?}");
        assert!(t.contains(&" ? loop_configure+0x1f6/0x520 [loop]".to_owned()));
        assert!(t.contains(&"RIP: 0033:0x7f3c0a2a3c5b".to_owned()));
        assert!(
            !t.iter()
                .any(|l| l.starts_with("Code:") || l.starts_with("RAX:") || l.starts_with("FS:")),
            "register dumps are not kept: {t:#?}"
        );
        assert!(!t.iter().any(|l| l.contains("loop0: detected")));
        assert_eq!(t.len(), 19, "{t:#?}");
    }

    #[test]
    fn an_oops_and_a_sysrq_backtrace_end_where_the_report_does() {
        let t = capture(OOPS_61, index_of(OOPS_61, "BUG:"));
        assert_eq!(
            t[0],
            "BUG: kernel NULL pointer dereference, address: 0000000000000000"
        );
        assert!(t.contains(&"Oops: 0002 [#1] PREEMPT SMP NOPTI".to_owned()));
        assert!(t.contains(&"Modules linked in: fuse".to_owned()), "{t:#?}");
        assert!(t.last().unwrap().starts_with("---[ end trace"));

        let t = capture(SYSRQ_L_61, index_of(SYSRQ_L_61, "Call Trace"));
        assert_eq!(t.first().map(String::as_str), Some("Call Trace:"));
        assert_eq!(t.last().map(String::as_str), Some(" </TASK>"), "{t:#?}");
        assert_eq!(t.len(), 9);

        // Cut at MAX_LINES, lines cut at MAX_LINE_CHARS; out of range is empty.
        let long: String = std::iter::once("Call Trace:\n".to_owned())
            .chain((0..100).map(|i| format!(" f{i}+0x1/0x2 {}\n", "x".repeat(300))))
            .collect();
        let t = capture(&long, 0);
        assert_eq!(t.len(), MAX_LINES);
        assert!(t.iter().all(|l| l.chars().count() <= MAX_LINE_CHARS + 1));
        assert!(capture("one line\n", 5).is_empty());
        assert!(capture("", 0).is_empty());
    }

    #[test]
    fn frames_are_parsed() {
        let named = |name: &str, offset, size, module: Option<&str>| Target::Named {
            name: name.into(),
            offset,
            size,
            module: module.map(Into::into),
        };
        let f = parse_frame(" ? loop_configure+0x1f6/0x520 [loop]").unwrap();
        assert!(f.unreliable && !f.rip);
        assert_eq!(
            f.target,
            named("loop_configure", 0x1f6, Some(0x520), Some("loop"))
        );
        let f = parse_frame("[   20.1]  __handle_sysrq.cold+0x43/0x11b").unwrap();
        assert_eq!(
            f.target,
            named("__handle_sysrq.cold", 0x43, Some(0x11b), None)
        );
        let f = parse_frame("RIP: 0010:sysrq_handle_crash+0x16/0x20").unwrap();
        assert!(f.rip);
        assert_eq!(
            f.target,
            named("sysrq_handle_crash", 0x16, Some(0x20), None)
        );
        // 6.x with build ids: `[module buildid]`.
        let f = parse_frame(" f+0x1/0x2 [kvm 0123456789abcdef]").unwrap();
        assert_eq!(f.target, named("f", 1, Some(2), Some("kvm")));
        assert_eq!(
            parse_frame(" 0xffffffff81001010").unwrap().target,
            Target::Raw(0xffff_ffff_8100_1010)
        );
        assert_eq!(
            parse_frame(" ? [<ffffffff81001804>]").unwrap().target,
            Target::Raw(0xffff_ffff_8100_1804)
        );
        assert_eq!(
            parse_frame(" [<ffffffff81001804>] helper+0x4/0x10")
                .unwrap()
                .target,
            named("helper", 4, Some(0x10), None)
        );
        assert_eq!(parse_frame("RIP: 0033:0x7f3c0a2a3c5b"), None, "user space");
        for not_a_frame in [
            "Call Trace:",
            " <TASK>",
            "CPU: 0 PID: 1 Comm: sh",
            "WARNING: CPU: 0 PID: 215 at drivers/block/loop.c:1034 loop_configure+0x1f6/0x520 [loop]",
            "RIP: 0010",
            "RIP: ",
            " +0x1/0x2",
            " f+0xzz/0x2",
            "",
        ] {
            assert_eq!(parse_frame(not_a_frame), None, "{not_a_frame:?}");
        }
    }

    const MAP: &str = "ffffffff81000000 T _text\n\
                       ffffffff81001000 T start_kernel\n\
                       ffffffff81001800 t helper\n\
                       ffffffff81002000 T write_sysrq_trigger\n";

    #[test]
    fn raw_addresses_get_names_from_the_system_map() {
        let symbols = KernelSymbols {
            table: Some(SymbolTable::parse(MAP)),
            debug: None,
        };
        let lines: Vec<String> = [
            "Call Trace:",
            " 0xffffffff81001010",
            " ? [<ffffffff81001804>]",
            " 0xffffffff90000000",
            " write_sysrq_trigger+0x24/0x40",
            " lo_ioctl+0x3c5/0x7f0 [loop]",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            symbolize(&lines, &symbols),
            [
                "Call Trace:",
                " 0xffffffff81001010 start_kernel+0x10",
                " ? [<ffffffff81001804>] helper+0x4",
                " 0xffffffff90000000",
                " write_sysrq_trigger+0x24/0x40",
                " lo_ioctl+0x3c5/0x7f0 [loop]",
            ]
        );
        // No symbols, or garbage: the lines as they were.
        assert_eq!(symbolize(&lines, &KernelSymbols::default()), lines);
        let garbage = KernelSymbols {
            table: Some(SymbolTable::parse("\u{0}\u{fffd}\nffff T\n")),
            debug: None,
        };
        assert_eq!(symbolize(&lines, &garbage), lines);
    }

    /// The C program of the file:line test: `leaf` starts on line
    /// `LINE_OF_LEAF`, `caller` calls it on line `LINE_OF_CALL`.
    const PROGRAM: &str = "\
int leaf(int x) {
\treturn x * 3;
}

int caller(int x)
{
\tint y = leaf(x);
\treturn y + 1;
}

int main(void)
{
\treturn caller(2) == 7 ? 0 : 1;
}
";
    const LINE_OF_CALL: u32 = 7;
    const LINE_OF_LEAF: u32 = 1;

    fn have(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn frames_in_a_binary_with_debug_info_get_file_and_line() {
        for tool in ["cc", kestrel_kernels::symbols::ADDR2LINE, "nm", "objdump"] {
            if !have(tool) {
                eprintln!("note: skipped: `{tool}` is not installed");
                return;
            }
        }
        let dir = std::env::temp_dir().join(format!("kestrel-trace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("splat.c");
        std::fs::write(&source, PROGRAM).unwrap();
        let binary = dir.join("vmlinux");
        let built = Command::new("cc")
            .args(["-g", "-O0", "-fno-pie", "-no-pie", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .unwrap();
        assert!(built.success());
        let nm = Command::new("nm").arg(&binary).output().unwrap();
        let map = String::from_utf8(nm.stdout).unwrap();
        std::fs::write(dir.join("System.map"), &map).unwrap();
        let table = SymbolTable::parse(&map);
        let caller = table.address_of("caller", 0, None).unwrap();

        // The return address of `leaf(x)` in `caller`: the instruction after
        // the call, as a call trace shows it.
        let dis = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&binary)
            .output()
            .unwrap();
        let dis = String::from_utf8(dis.stdout).unwrap();
        let body = dis.split("<caller>:").nth(1).unwrap();
        let insns: Vec<(u64, &str)> = body
            .lines()
            .skip(1)
            .map_while(|l| {
                let (at, text) = l.trim().split_once(':')?;
                Some((u64::from_str_radix(at, 16).ok()?, text))
            })
            .collect();
        let call = insns
            .iter()
            .position(|(_, text)| text.contains("call") && text.contains("<leaf>"))
            .unwrap();
        let ret = insns[call + 1].0;

        let symbols = kestrel_kernels::symbols::SymbolSources::for_image(&binary).load();
        assert!(symbols.debug.is_some(), "a -g binary has .debug_info");
        let lines: Vec<String> = vec![
            "RIP: 0010:leaf+0x0/0x10".into(),
            format!(" caller+{:#x}/0x20", ret - caller),
            " leaf+0x1/0x10 [some_module]".into(),
        ];
        let out = symbolize(&lines, &symbols);
        let file = "splat.c";
        assert!(
            out[0].starts_with("RIP: 0010:leaf+0x0/0x10 (")
                && out[0].ends_with(&format!("{file}:{LINE_OF_LEAF})")),
            "{out:#?}"
        );
        assert!(
            out[1].ends_with(&format!("{file}:{LINE_OF_CALL})")),
            "a return address maps to its call's line: {out:#?}"
        );
        assert_eq!(out[2], lines[2], "module frames are not in vmlinux");

        // Without debug info: names only, no file:line.
        let stripped = dir.join("stripped");
        assert!(Command::new("cc")
            .args(["-O0", "-fno-pie", "-no-pie", "-o"])
            .arg(&stripped)
            .arg(&source)
            .status()
            .unwrap()
            .success());
        assert_eq!(DebugInfo::open(&stripped), None);
        assert!(DebugInfo::open(Path::new("/nonexistent/vmlinux")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
