//! Virtqueue descriptor chains: a guest writes any bytes into its RAM and
//! any ring addresses and size into the transport, and the device pops
//! every chain and walks it with `Buffers::of`. The queue is built as the
//! virtio-mmio transport builds it, and drained by `serve_available` as the
//! devices drain theirs (virtio-fs: one chain at a time, a bad chain goes
//! back with length 0; virtio-console: all chains per pass, a bad chain
//! breaks the device). Nothing panics or hangs, and `Buffers::of` agrees
//! with a plain spec-level walk of the chain: it returns buffers exactly
//! for chains that end, never loop or leave their table, nest no indirect
//! table, list readable before writable buffers and lie wholly inside RAM;
//! reading and writing through those buffers then never fails.
//!
//! Input: a header, then the guest's RAM contents as records.
//!
//! | bytes  | field                                                     |
//! |--------|-----------------------------------------------------------|
//! | 0      | mode: bit 0 EVENT_IDX, bit 1 queue maximum 1024 (virtio-fs; else 128, the console), bit 2 console-style passes, bit 3 a second notify |
//! | 1..3   | queue size (QueueNum, u16 LE)                             |
//! | 3..11  | descriptor table address (u64 LE)                         |
//! | 11..19 | available ring address (u64 LE)                           |
//! | 19..27 | used ring address (u64 LE)                                |
//! | 27..29 | how many readable bytes the device peeks at (u16 LE)      |
//! | 29     | how many bytes the device writes into each chain          |
//! | 30..   | records `[gpa: u32 LE][len: u16 LE][len bytes]`            |
//!
//! Guest RAM is 192 KiB in three regions: [0, 64K) and [64K, 128K) back to
//! back (a buffer may span both) and [192K, 256K) after a hole.
#![no_main]

use kestrel::devices::virtio::chain::{Buffers, ChainError, COPY_CHUNK};
use kestrel::devices::virtio::serve_available;
use kestrel::memory::GuestMemory;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM regions `(start, len)`.
const RAM: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x3_0000, 0x1_0000)];
const HEADER_LEN: usize = 30;
/// Queue maxima of the devices: virtio-console and virtio-fs.
const CONSOLE_MAX: u16 = 128;
const FS_MAX: u16 = 1024;
/// Guest bytes copied out through the buffers per input at most (keeps
/// each run short; a chain may name the same big buffer a thousand times).
const COPY_BUDGET: usize = 4 << 20;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

struct Input<'a> {
    event_idx: bool,
    max: u16,
    console: bool,
    rounds: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    peek: usize,
    reply: Vec<u8>,
    records: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (h, records) = data.split_at_checked(HEADER_LEN)?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
    let mode = h[0];
    Some(Input {
        event_idx: mode & 1 != 0,
        max: if mode & 2 != 0 { FS_MAX } else { CONSOLE_MAX },
        console: mode & 4 != 0,
        rounds: if mode & 8 != 0 { 2 } else { 1 },
        size: u16::from_le_bytes([h[1], h[2]]),
        desc: u64_at(3),
        avail: u64_at(11),
        used: u64_at(19),
        peek: usize::from(u16::from_le_bytes([h[27], h[28]])),
        reply: (0..h[29]).collect(),
        records,
    })
}

/// Writes the records into guest RAM (a record partly outside RAM is
/// written as far as it fits, or not at all).
fn fill(mem: &GuestMemory, mut records: &[u8]) {
    while records.len() >= 6 {
        let gpa = u64::from(u32::from_le_bytes(records[..4].try_into().unwrap()));
        let len = usize::from(u16::from_le_bytes([records[4], records[5]]));
        records = &records[6..];
        let bytes = &records[..len.min(records.len())];
        records = &records[bytes.len()..];
        let _ = mem.write(bytes, GuestAddress(gpa));
    }
}

/// Whether `[addr, addr + len)` lies wholly inside RAM (by the region
/// table, not by asking the memory).
fn in_ram(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    // Regions 0 and 1 are back to back.
    let low_end = RAM[1].0 + RAM[1].1 as u64;
    let high = (RAM[2].0, RAM[2].0 + RAM[2].1 as u64);
    end <= low_end || (addr >= high.0 && end <= high.1)
}

/// One raw split descriptor.
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemory, at: u64) -> Option<Desc> {
    if !in_ram(at, 16) {
        return None;
    }
    let mut d = [0u8; 16];
    mem.read_slice(&mut d, GuestAddress(at)).ok()?;
    Some(Desc {
        addr: u64::from_le_bytes(d[..8].try_into().unwrap()),
        len: u32::from_le_bytes(d[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes([d[12], d[13]]),
        next: u16::from_le_bytes([d[14], d[15]]),
    })
}

type BufList = Vec<(GuestAddress, usize)>;

/// The chain at `head` walked by the spec (virtio 1.2 §2.7.5, §2.7.5.3),
/// with what virtio-queue tolerates: an indirect descriptor's own NEXT and
/// WRITE flags are ignored, a direct chain may lead into one indirect
/// table, and a zero-length writable buffer does not end the readable
/// part. `None`: the device must refuse the chain.
fn model(mem: &GuestMemory, desc_table: u64, size: u16, head: u16) -> Option<(BufList, BufList)> {
    let mut table = desc_table;
    let mut table_len = u32::from(size);
    let mut seen = vec![false; table_len as usize];
    let mut index = head;
    let mut indirect = false;
    let mut total = 0u64;
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    loop {
        if u32::from(index) >= table_len || seen[usize::from(index)] {
            return None;
        }
        seen[usize::from(index)] = true;
        let d = read_desc(mem, table.checked_add(u64::from(index) * 16)?)?;
        if d.flags & F_INDIRECT != 0 {
            if indirect || d.len % 16 != 0 || d.len / 16 > u32::from(u16::MAX) {
                return None;
            }
            indirect = true;
            table = d.addr;
            table_len = d.len / 16;
            seen = vec![false; table_len as usize];
            index = 0;
            continue;
        }
        // No chain is longer than 2^32 bytes (§2.7.5.2).
        total += u64::from(d.len);
        if total > u64::from(u32::MAX) {
            return None;
        }
        let buffer = (GuestAddress(d.addr), d.len as usize);
        if d.flags & F_WRITE != 0 {
            if d.len > 0 {
                writable.push(buffer);
            }
        } else if !writable.is_empty() {
            return None;
        } else if d.len > 0 {
            readable.push(buffer);
        }
        if d.len > 0 && !in_ram(d.addr, u64::from(d.len)) {
            return None;
        }
        if d.flags & F_NEXT == 0 {
            return Some((readable, writable));
        }
        index = d.next;
    }
}

/// Everything a device may do with a checked chain; returns the bytes
/// written (the used length).
fn use_buffers(bufs: &Buffers, mem: &GuestMemory, input: &Input, budget: &mut usize) -> u32 {
    for &(addr, len) in bufs.readable.iter().chain(&bufs.writable) {
        assert!(len > 0, "a zero-length buffer in {bufs:?}");
        assert!(in_ram(addr.0, len as u64), "{addr:?}+{len:#x} outside RAM");
    }
    let total: usize = bufs.readable.iter().map(|b| b.1).sum();
    assert_eq!(bufs.readable_len(), total);
    if total <= *budget {
        *budget -= total;
        // What the guest put there, copied buffer by buffer.
        let mut expect = vec![0u8; total];
        let mut at = 0;
        for &(addr, len) in &bufs.readable {
            mem.read_slice(&mut expect[at..at + len], addr)
                .expect("a checked buffer is readable");
            at += len;
        }
        let mut got = Vec::with_capacity(total);
        bufs.for_each_readable(mem, &mut Vec::new(), |piece| {
            assert!(!piece.is_empty() && piece.len() <= COPY_CHUNK);
            got.extend_from_slice(piece);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(got == expect, "for_each_readable differs");
        got.clear();
        bufs.write_readable_to(mem, &mut got)
            .expect("a checked chain can be written out");
        assert!(got == expect, "write_readable_to differs");
        let prefix = bufs.read_prefix(mem, input.peek);
        assert!(
            prefix == expect[..input.peek.min(total)],
            "read_prefix differs"
        );
        // A sink that gives up stops the copy.
        let mut calls = 0;
        let stopped = bufs.for_each_readable(mem, &mut Vec::new(), |_| {
            calls += 1;
            Err(())
        });
        assert_eq!(
            (stopped.is_err(), calls),
            (total > 0, usize::from(total > 0))
        );
    }
    let room: usize = bufs.writable.iter().map(|b| b.1).sum();
    let written = bufs.write(mem, &input.reply);
    assert_eq!(written, input.reply.len().min(room));
    written as u32
}

/// One device round over `queue` (`serve_available`, as the devices run
/// theirs). `Err`: the device would mark itself broken (and ignore the
/// queue from then on).
fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    input: &Input,
    budget: &mut usize,
) -> Result<(), Broken> {
    let desc = queue.desc_table();
    let size = queue.size();
    let mut walk = |chain: DescriptorChain<&GuestMemory>| {
        let head = chain.head_index();
        let expect = model(mem, desc, size, head);
        let got = Buffers::of(chain, mem);
        match (&got, &expect) {
            (Ok(b), Some((r, w))) => assert!(
                b.head == head && b.readable == *r && b.writable == *w,
                "Buffers::of gave {b:?}, the spec {r:?} {w:?}"
            ),
            (Err(_), None) => {}
            _ => panic!("chain {head}: Buffers::of says {got:?}, the spec {expect:?}"),
        }
        got.map(|b| (use_buffers(&b, mem, input, budget), head))
    };
    if input.console {
        // virtio-console: all chains per pass, the first bad one breaks it.
        serve_available(queue, mem, |queue| {
            let chains: Vec<_> = queue.iter(mem)?.collect();
            let taken = chains.len();
            for chain in chains {
                let (len, head) = walk(chain)?;
                queue.add_used(mem, head, len)?;
            }
            Ok::<_, Broken>(taken)
        })?;
    } else {
        // virtio-fs: one chain at a time, a bad one returned unused.
        serve_available(queue, mem, |queue| {
            let mut taken = 0;
            loop {
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else {
                    return Ok::<_, Broken>(taken);
                };
                let head = chain.head_index();
                let len = walk(chain).map_or(0, |(len, _)| len);
                queue.add_used(mem, head, len)?;
                taken += 1;
            }
        })?;
    }
    queue.needs_notification(mem)?;
    Ok(())
}

/// A device would stop serving (a ring error, or a bad chain on a queue
/// of the console).
struct Broken;

impl From<virtio_queue::Error> for Broken {
    fn from(_: virtio_queue::Error) -> Self {
        Broken
    }
}

impl From<ChainError> for Broken {
    fn from(_: ChainError) -> Self {
        Broken
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else {
        return;
    };
    let ranges: Vec<_> = RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemory::from_ranges(&ranges).expect("the fuzz RAM layout is valid");
    fill(&mem, input.records);
    // As the transport builds the queue from the driver's registers
    // (`mmio.rs`: `QueueSettings::build`); a queue it refuses never
    // reaches a device.
    let mut queue = Queue::new(input.max).expect("the devices' maxima are valid");
    let built = queue.try_set_size(input.size).is_ok()
        && queue
            .try_set_desc_table_address(GuestAddress(input.desc))
            .is_ok()
        && queue
            .try_set_avail_ring_address(GuestAddress(input.avail))
            .is_ok()
        && queue
            .try_set_used_ring_address(GuestAddress(input.used))
            .is_ok();
    if !built {
        return;
    }
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }
    queue.set_event_idx(input.event_idx);
    let mut budget = COPY_BUDGET;
    for _ in 0..input.rounds {
        if drain(&mut queue, &mem, &input, &mut budget).is_err() {
            break;
        }
    }
});
