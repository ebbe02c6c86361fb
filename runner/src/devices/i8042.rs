//! i8042 keyboard controller: only the CPU-reset command (0xfe to port 0x64),
//! which ends the VM. Placed over ports 0x60..=0x64.

use vm_superio::I8042Device;

use super::EventLine;
use crate::bus::Device;

/// The controller; reads return 0 (no data, input buffer empty).
pub struct I8042(I8042Device<EventLine>);

impl I8042 {
    /// A controller that sends a reset request on `line`.
    pub fn new(line: EventLine) -> Self {
        I8042(I8042Device::new(line))
    }
}

impl Device for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            let Ok(()) = self.0.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::VmEvent;
    use crate::layout;

    #[test]
    fn reset_command_sends_one_event_and_nothing_else_does() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = I8042::new(EventLine(tx));
        let cmd = u64::from(layout::I8042_CMD_PORT - layout::I8042_DATA_PORT);
        dev.write(0, &[0xfe]);
        dev.write(cmd, &[0xfd]);
        dev.write(cmd, &[]);
        assert!(rx.try_recv().is_err());
        dev.write(cmd, &[0xfe]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::ResetRequested));
    }
}
