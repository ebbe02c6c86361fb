//! 8250 UART (vm-superio) on the port bus.
//!
//! Invariant: only single-byte accesses reach the UART model; wider ones
//! read as zero in the extra bytes and write only their first byte.

use std::io::Write;

use vm_superio::serial::{NoEvents, Serial};

use super::IrqLine;
use crate::bus::Device;
use crate::log;

/// A UART whose transmitted bytes go to `W`.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqLine, NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: IrqLine, out: W) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }
}

impl<W: Write + Send> Device for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug(format_args!("serial write at +{offset}: {e:?}"));
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
}
