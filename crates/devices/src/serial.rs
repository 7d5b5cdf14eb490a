//! COM1: a 16550A UART (vm-superio) on port 0x3f8, IRQ 4.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{DeviceAction, PortDevice};
use crate::output::{OutputSink, StreamId};
use crate::state::{decode, encode, StateError, Stateful};

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Ports claimed.
pub const COM1_PORT_LEN: u16 = 8;

/// Raises the serial interrupt through an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Bytes the guest transmits go to the output sink on this device's stream.
#[allow(missing_debug_implementations)]
pub struct SinkWriter {
    sink: Arc<dyn OutputSink>,
    stream: StreamId,
}

impl io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.emit(self.stream, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serializable mirror of the UART's registers and receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// The serial device.
pub struct Serial {
    uart: Uart<IrqLine, NoEvents, SinkWriter>,
    irq: EventFd,
    sink: Arc<dyn OutputSink>,
    stream: StreamId,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `irq` and sending what the guest writes to `sink`.
    pub fn new(irq: EventFd, sink: Arc<dyn OutputSink>, stream: StreamId) -> io::Result<Self> {
        let uart = Uart::new(
            IrqLine(irq.try_clone()?),
            SinkWriter {
                sink: sink.clone(),
                stream,
            },
        );
        Ok(Self {
            uart,
            irq,
            sink,
            stream,
        })
    }

    fn irq_line(&self) -> Result<IrqLine, StateError> {
        self.irq
            .try_clone()
            .map(IrqLine)
            .map_err(|e| StateError::Invalid {
                device: "serial0",
                reason: format!("cannot clone the interrupt eventfd: {e}"),
            })
    }

    fn writer(&self) -> SinkWriter {
        SinkWriter {
            sink: self.sink.clone(),
            stream: self.stream,
        }
    }

    /// Queue bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl PortDevice for Serial {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // An interrupt that cannot be signalled (eventfd full) is not fatal: the guest
            // polls the line status anyway.
            let _ignored_irq_error = self.uart.write(off, value);
        }
        DeviceAction::None
    }
}

impl Stateful for Serial {
    fn state_id(&self) -> &'static str {
        "serial0"
    }

    fn save(&self) -> Result<Vec<u8>, StateError> {
        let s = self.uart.state();
        encode(
            self.state_id(),
            &SerialSnapshot {
                baud_divisor_low: s.baud_divisor_low,
                baud_divisor_high: s.baud_divisor_high,
                interrupt_enable: s.interrupt_enable,
                interrupt_identification: s.interrupt_identification,
                line_control: s.line_control,
                line_status: s.line_status,
                modem_control: s.modem_control,
                modem_status: s.modem_status,
                scratch: s.scratch,
                in_buffer: s.in_buffer,
            },
        )
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: SerialSnapshot = decode(self.state_id(), bytes)?;
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        };
        self.uart =
            Uart::from_state(&state, self.irq_line()?, NoEvents, self.writer()).map_err(|e| {
                StateError::Invalid {
                    device: "serial0",
                    reason: format!("{e:?}"),
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Capture(Mutex<Vec<u8>>);
    impl OutputSink for Capture {
        fn emit(&self, _s: StreamId, b: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(b);
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink_and_state_restores() {
        let cap = Arc::new(Capture::default());
        let mut s = Serial::new(EventFd::new(0).unwrap(), cap.clone(), 0).unwrap();
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(&*cap.0.lock().unwrap(), b"hi");
        s.write(7, &[0x5a]); // scratch register
        s.enqueue_input(b"xy");
        let saved = s.save().unwrap();
        let mut t = Serial::new(EventFd::new(0).unwrap(), cap.clone(), 0).unwrap();
        t.restore(&saved).unwrap();
        let mut b = [0u8];
        t.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        t.read(0, &mut b);
        assert_eq!(b[0], b'x');
        t.write(0, b"!");
        assert_eq!(&*cap.0.lock().unwrap(), b"hi!");
    }
}
