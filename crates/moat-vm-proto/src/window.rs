//! Per-stream send credit.

use crate::INITIAL_WINDOW;

/// What a sender may still put on the wire for one stream. The receiver grants more with
/// `Credit` frames after it has delivered bytes, so a stream never buffers more than
/// `INITIAL_WINDOW` at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    avail: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            avail: INITIAL_WINDOW,
        }
    }
}

impl Window {
    pub fn available(&self) -> u32 {
        self.avail
    }

    /// Takes up to `want` bytes of credit; returns how many may be sent now (0 = wait).
    pub fn take(&mut self, want: usize) -> usize {
        let n = want.min(self.avail as usize);
        self.avail -= n as u32;
        n
    }

    /// Adds granted credit; a peer granting beyond the initial window is misbehaving and is
    /// capped rather than trusted.
    pub fn grant(&mut self, n: u32) {
        self.avail = self.avail.saturating_add(n).min(INITIAL_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_never_exceeds_the_window_and_grant_restores_it() {
        let mut w = Window::default();
        assert_eq!(
            w.take(INITIAL_WINDOW as usize + 10),
            INITIAL_WINDOW as usize
        );
        assert_eq!(w.take(1), 0);
        w.grant(100);
        assert_eq!(w.take(1000), 100);
        w.grant(u32::MAX);
        assert_eq!(w.available(), INITIAL_WINDOW);
    }
}
