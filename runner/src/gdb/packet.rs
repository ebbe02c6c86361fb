//! The gdb remote protocol's framing: `$data#cs` packets with a modulo-256
//! checksum, `+`/`-` acknowledgements, `}` escapes, run-length encoding
//! (accepted, never sent), and the out-of-band interrupt byte 0x03.
//!
//! Invariant: any byte stream decodes without a panic; a packet longer
//! than [`MAX_PACKET`] or with a wrong checksum is reported as
//! [`Incoming::Bad`] (the caller answers `-`), never buffered without bound.

/// The largest packet kestrel accepts (and announces as `PacketSize`).
pub const MAX_PACKET: usize = 0x4000;

/// What the decoder found in gdb's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A packet with a good checksum, unescaped.
    Packet(Vec<u8>),
    /// `+`.
    Ack,
    /// `-`: send the last packet again.
    Nak,
    /// 0x03 outside a packet: stop the target.
    Interrupt,
    /// A packet with a wrong checksum, too long, or malformed.
    Bad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Data,
    Escape,
    Repeat,
    Check1,
    Check2(u8),
}

/// A byte-at-a-time packet decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    data: Vec<u8>,
    sum: u8,
    oversized: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Idle,
            data: Vec::new(),
            sum: 0,
            oversized: false,
        }
    }
}

impl Decoder {
    /// Feeds one byte; `Some` when it completes something.
    pub fn feed(&mut self, byte: u8) -> Option<Incoming> {
        match self.state {
            State::Idle => match byte {
                b'$' => {
                    self.data.clear();
                    self.sum = 0;
                    self.oversized = false;
                    self.state = State::Data;
                    None
                }
                b'+' => Some(Incoming::Ack),
                b'-' => Some(Incoming::Nak),
                0x03 => Some(Incoming::Interrupt),
                _ => None,
            },
            State::Data | State::Escape | State::Repeat if byte == b'#' => {
                let malformed = self.state != State::Data;
                self.state = State::Check1;
                if malformed {
                    self.oversized = true;
                }
                None
            }
            State::Data => {
                self.sum = self.sum.wrapping_add(byte);
                match byte {
                    b'}' => self.state = State::Escape,
                    b'*' => self.state = State::Repeat,
                    // A new packet start inside a packet: gdb gave up on
                    // the old one.
                    b'$' => {
                        self.data.clear();
                        self.sum = 0;
                        self.oversized = false;
                    }
                    _ => self.push(byte),
                }
                None
            }
            State::Escape => {
                self.sum = self.sum.wrapping_add(byte);
                self.push(byte ^ 0x20);
                self.state = State::Data;
                None
            }
            State::Repeat => {
                self.sum = self.sum.wrapping_add(byte);
                // `x*n`: n - 29 more copies of x (n is printable, >= 32).
                match (self.data.last().copied(), byte.checked_sub(29)) {
                    (Some(last), Some(n)) if byte >= b' ' => {
                        for _ in 0..n {
                            self.push(last);
                        }
                    }
                    _ => self.oversized = true,
                }
                self.state = State::Data;
                None
            }
            State::Check1 => match hex_digit(byte) {
                Some(d) => {
                    self.state = State::Check2(d);
                    None
                }
                None => {
                    self.state = State::Idle;
                    Some(Incoming::Bad)
                }
            },
            State::Check2(high) => {
                self.state = State::Idle;
                let good = hex_digit(byte).is_some_and(|low| (high << 4 | low) == self.sum);
                if good && !self.oversized {
                    Some(Incoming::Packet(std::mem::take(&mut self.data)))
                } else {
                    self.data.clear();
                    Some(Incoming::Bad)
                }
            }
        }
    }

    fn push(&mut self, byte: u8) {
        if self.data.len() < MAX_PACKET {
            self.data.push(byte);
        } else {
            self.oversized = true;
        }
    }
}

/// `$payload#cs` with `#`, `$`, `}` and `*` escaped.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(b'$');
    let mut sum: u8 = 0;
    for &b in payload {
        let bytes: &[u8] = if matches!(b, b'#' | b'$' | b'}' | b'*') {
            &[b'}', b ^ 0x20]
        } else {
            std::slice::from_ref(&b)
        };
        for &e in bytes {
            sum = sum.wrapping_add(e);
            out.push(e);
        }
    }
    out.push(b'#');
    out.extend_from_slice(format!("{sum:02x}").as_bytes());
    out
}

/// The value of one hex digit.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Hex pairs → bytes (None on an odd length or a non-hex digit).
pub fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?))
        .collect()
}

/// A big-endian hex number as gdb writes addresses and lengths (at most
/// 16 digits).
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.iter()
        .try_fold(0u64, |v, &b| Some(v << 4 | u64::from(hex_digit(b)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Incoming> {
        let mut d = Decoder::default();
        bytes.iter().filter_map(|&b| d.feed(b)).collect()
    }

    #[test]
    fn packets_acks_and_interrupts_decode() {
        assert_eq!(
            decode_all(b"+$g#67-\x03$?#3f"),
            [
                Incoming::Ack,
                Incoming::Packet(b"g".to_vec()),
                Incoming::Nak,
                Incoming::Interrupt,
                Incoming::Packet(b"?".to_vec()),
            ]
        );
    }

    #[test]
    fn a_wrong_checksum_or_non_hex_checksum_is_bad() {
        assert_eq!(decode_all(b"$g#68"), [Incoming::Bad]);
        assert_eq!(decode_all(b"$g#zz"), [Incoming::Bad]);
        // And the decoder recovers.
        assert_eq!(
            decode_all(b"$g#6x$g#67"),
            [Incoming::Bad, Incoming::Packet(b"g".to_vec())]
        );
    }

    #[test]
    fn encode_escapes_and_decode_undoes_it() {
        let payload = b"a}b#c$d*e";
        let wire = encode(payload);
        assert_eq!(&wire[1..wire.len() - 3], b"a}]b}\x03c}\x04d}\x0ae");
        assert_eq!(decode_all(&wire), [Incoming::Packet(payload.to_vec())]);
        // Checksum is over the escaped bytes.
        let sum = wire[1..wire.len() - 3]
            .iter()
            .fold(0u8, |s, &b| s.wrapping_add(b));
        assert_eq!(&wire[wire.len() - 2..], format!("{sum:02x}").as_bytes());
    }

    #[test]
    fn run_length_encoding_expands() {
        // "0* " = '0' then ' ' (32) - 29 = 3 more: "0000".
        let body = b"0* ";
        let sum = body.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        let wire = [b"$".as_slice(), body, format!("#{sum:02x}").as_bytes()].concat();
        assert_eq!(decode_all(&wire), [Incoming::Packet(b"0000".to_vec())]);
        // A repeat with nothing before it is malformed.
        let body = b"* ";
        let sum = body.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        let wire = [b"$".as_slice(), body, format!("#{sum:02x}").as_bytes()].concat();
        assert_eq!(decode_all(&wire), [Incoming::Bad]);
    }

    #[test]
    fn oversized_packets_are_dropped_not_buffered() {
        let mut wire = b"$".to_vec();
        wire.extend(std::iter::repeat_n(b'a', MAX_PACKET + 10));
        let sum = (MAX_PACKET + 10) as u32 * u32::from(b'a');
        wire.extend_from_slice(format!("#{:02x}", sum as u8).as_bytes());
        assert_eq!(decode_all(&wire), [Incoming::Bad]);
        // Run-length encoding cannot blow the limit up either.
        let mut wire = b"$a".to_vec();
        for _ in 0..2000 {
            wire.extend_from_slice(b"*~");
        }
        let sum = wire[1..].iter().fold(0u8, |s, &b| s.wrapping_add(b));
        wire.extend_from_slice(format!("#{sum:02x}").as_bytes());
        assert_eq!(decode_all(&wire), [Incoming::Bad]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decoder::default();
        let mut x: u32 = 12345;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let _ = d.feed((x >> 16) as u8);
        }
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex(b"00aB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(from_hex(b"0"), None);
        assert_eq!(from_hex(b"0g"), None);
        assert_eq!(parse_u64(b"ffffffff81000000"), Some(0xffff_ffff_8100_0000));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"11111111111111111"), None);
        assert_eq!(parse_u64(b"x1"), None);
    }
}
