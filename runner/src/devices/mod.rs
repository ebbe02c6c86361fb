//! Emulated devices. Each implements [`crate::bus::Device`] and is placed
//! on a bus by `vm.rs` at the addresses from [`crate::layout`].
//!
//! Invariant: no device panics on any guest input; devices report
//! machine-level events (reset, status received) only through the VM's
//! event channel, never by touching vCPUs.

pub mod i8042;
pub mod probe;
pub mod serial;
pub mod sinks;
pub mod virtio;

use std::sync::mpsc::Sender;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::event::VmEvent;
use crate::kvm::IrqPin;

/// An interrupt line: an eventfd wired to a GSI by KVM's irqfd (virtio
/// devices, raised from their worker threads), a pin pulsed with
/// `KVM_IRQ_LINE` by the raising thread (the UARTs, raised inside a vCPU's
/// port exit), or nothing (raw guests run without an interrupt controller).
pub struct IrqLine(Line);

enum Line {
    Fd(EventFd),
    Pin(IrqPin),
    None,
}

impl IrqLine {
    /// A line backed by `evt` (already registered as an irqfd).
    pub fn new(evt: EventFd) -> Self {
        IrqLine(Line::Fd(evt))
    }

    /// A line pulsed synchronously through the VM's irqchip.
    pub fn pin(pin: IrqPin) -> Self {
        IrqLine(Line::Pin(pin))
    }

    /// A line that goes nowhere.
    pub fn none() -> Self {
        IrqLine(Line::None)
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Line::Fd(evt) => evt.write(1),
            Line::Pin(pin) => pin.pulse(),
            Line::None => Ok(()),
        }
    }
}

/// Sends one event to the VM loop (a gone receiver means the VM is
/// already ending, which is fine).
#[derive(Clone)]
pub struct EventLine(pub Sender<VmEvent>);

impl Trigger for EventLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        let _ = self.0.send(VmEvent::ResetRequested);
        Ok(())
    }
}
