//! 8250 UART (vm-superio) on the port bus.
//!
//! Invariant: only single-byte accesses reach the UART model; wider ones
//! read as zero in the extra bytes and write only their first byte.
//!
//! Input for the guest ([`SerialDevice::queue_input`]) is received here,
//! not through vm-superio's FIFO: vm-superio clears a pending
//! received-data interrupt on every IIR or RBR read even while bytes are
//! left, and the interrupt is an edge, so Linux's 8250 driver, which takes
//! at most 256 bytes per pass, stranded the rest (measured: a job whose
//! size was 1–64 bytes past a multiple of 256 never arrived). Here, as on
//! a real 16550, LSR.DR and IIR's "received data" stay up while any byte
//! is left, and the line is raised again every [`RETRIGGER`] bytes.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::serial::{NoEvents, Serial, SerialState};
use vm_superio::Trigger as _;

use super::IrqLine;
use crate::bus::Device;
use crate::log;

/// A UART whose transmitted bytes go to `W`.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqLine, NoEvents, W>,
    input: VecDeque<u8>,
    /// Bytes read since the interrupt was last raised.
    since_raised: usize,
}

/// Register offsets and bits of the 8250 this module handles itself.
const RBR: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const LCR: u64 = 3;
const LSR: u64 = 5;
const LCR_DLAB: u8 = 0x80;
const IER_RDA: u8 = 0x01;
const LSR_DR: u8 = 0x01;
/// IIR: FIFOs enabled (as vm-superio reports), "received data available".
const IIR_RDA: u8 = 0xc0 | 0x04;
/// While input is left, the line is raised again after this many bytes
/// were read (the 8250 driver gives up after 512 passes of an interrupt).
const RETRIGGER: usize = 128;

impl<W: Write + Send> SerialDevice<W> {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: IrqLine, out: W) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
            input: VecDeque::new(),
            since_raised: 0,
        }
    }

    /// A UART with the registers and FIFO of `state` (a snapshot's).
    pub fn from_state(state: &SerialState, irq: IrqLine, out: W) -> Result<Self, String> {
        let uart = Serial::from_state(state, irq, NoEvents, out)
            .map_err(|e| format!("cannot restore a UART: {e:?}"))?;
        Ok(SerialDevice {
            uart,
            input: VecDeque::new(),
            since_raised: 0,
        })
    }

    /// The registers and vm-superio's receive FIFO (input queued with
    /// [`Self::queue_input`] is not part of it: take snapshots before
    /// giving a UART input).
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Input the guest has not read yet.
    pub fn input_pending(&self) -> usize {
        self.input.len()
    }

    /// Bytes for the guest to receive, after any queued before.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let was_empty = self.input.is_empty();
        self.input.extend(bytes);
        if was_empty && !bytes.is_empty() {
            self.raise();
        }
    }

    fn dlab(&mut self) -> bool {
        self.uart.read(LCR as u8) & LCR_DLAB != 0
    }

    fn rda_enabled(&self) -> bool {
        self.uart.state().interrupt_enable & IER_RDA != 0
    }

    /// Raises the line if the guest enabled the received-data interrupt.
    fn raise(&mut self) {
        self.since_raised = 0;
        if self.rda_enabled() {
            if let Err(e) = self.uart.interrupt_evt().trigger() {
                log::debug(format_args!("serial interrupt: {e}"));
            }
        }
    }

    /// A read the receive side answers: RBR, LSR.DR, IIR while input is
    /// left. `None`: vm-superio answers.
    fn read_input(&mut self, offset: u64) -> Option<u8> {
        if self.input.is_empty() {
            return None;
        }
        match offset {
            RBR if !self.dlab() => {
                let byte = self.input.pop_front();
                self.since_raised += 1;
                if !self.input.is_empty() && self.since_raised >= RETRIGGER {
                    self.raise();
                }
                byte
            }
            LSR => Some(self.uart.read(LSR as u8) | LSR_DR),
            // Received data outranks "transmitter empty": vm-superio's IIR
            // is not read (that would clear its pending THRE) until the
            // input is gone.
            IIR if self.rda_enabled() => Some(IIR_RDA),
            _ => None,
        }
    }
}

impl<W: Write + Send> Device for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match self.read_input(offset) {
                Some(value) => value,
                None => self.uart.read(offset as u8),
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let enables_rda = offset == IER && value & IER_RDA != 0 && !self.dlab();
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug(format_args!("serial write at +{offset}: {e:?}"));
            }
            if enables_rda && !self.input.is_empty() {
                self.raise();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_tolerates_garbage() {
        let out = Capture::default();
        let mut dev = SerialDevice::new(IrqLine::none(), out.clone());
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        // Garbage: wide accesses, every offset, every value.
        for offset in 0..16u64 {
            dev.write(offset, &[0xff, 0xff, 0xff, 0xff]);
            let mut wide = [0u8; 4];
            dev.read(offset, &mut wide);
            assert_eq!(&wide[1..], &[0, 0, 0]);
            dev.write(offset, &[]);
            dev.read(offset, &mut []);
        }
        assert!(out.0.lock().unwrap().starts_with(b"hi\n"));
    }

    /// Reads what the guest would: LSR until data is ready, then RBR.
    fn receive(dev: &mut SerialDevice<Capture>, max: usize) -> Vec<u8> {
        const LSR: u64 = 5;
        let mut got = Vec::new();
        while got.len() < max {
            let mut lsr = [0u8];
            dev.read(LSR, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        got
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_whole_and_in_order() {
        let mut dev = SerialDevice::new(IrqLine::none(), Capture::default());
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        dev.queue_input(&input[..600]);
        dev.queue_input(&input[600..]);
        assert_eq!(receive(&mut dev, 5000), input);
        assert!(receive(&mut dev, 10).is_empty(), "nothing more");
    }

    /// Linux's 8250 interrupt handler: while IIR says "received data",
    /// read at most 256 bytes per pass.
    fn interrupt_handler(dev: &mut SerialDevice<Capture>, got: &mut Vec<u8>) {
        for _pass in 0..512 {
            let mut iir = [0u8];
            dev.read(IIR, &mut iir);
            if iir[0] & 1 != 0 {
                return;
            }
            let before = got.len();
            got.extend(receive(dev, 256));
            if got.len() == before {
                return;
            }
        }
    }

    #[test]
    fn every_byte_arrives_through_the_drivers_interrupt_handler() {
        for len in [1usize, 64, 256, 257, 300, 320, 525, 575, 775, 1075, 5000] {
            let irq =
                vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
            let seen = irq.try_clone().unwrap();
            let mut dev = SerialDevice::new(IrqLine::new(irq), Capture::default());
            dev.write(IER, &[IER_RDA]);
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            dev.queue_input(&input);
            let mut got = Vec::new();
            // One handler run per interrupt raised, as an edge-triggered
            // line delivers them.
            while seen.read().is_ok() {
                interrupt_handler(&mut dev, &mut got);
            }
            assert_eq!(got, input, "{len} bytes");
            let mut iir = [0u8];
            dev.read(IIR, &mut iir);
            assert_eq!(iir[0] & 1, 1, "no interrupt left pending");
        }
    }

    #[test]
    fn state_survives_a_round_trip() {
        let mut dev = SerialDevice::new(IrqLine::none(), Capture::default());
        dev.write(1, &[0x01]); // IER: receive interrupt
        dev.write(7, &[0x5a]); // scratch
        let state = dev.state();
        assert_eq!(state.interrupt_enable, 0x01);
        let mut copy =
            SerialDevice::from_state(&state, IrqLine::none(), Capture::default()).unwrap();
        let mut scratch = [0u8];
        copy.read(7, &mut scratch);
        assert_eq!(scratch[0], 0x5a);
        copy.queue_input(b"ab");
        assert_eq!(receive(&mut copy, 10), b"ab");
    }
}
