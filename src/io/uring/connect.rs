//! Connect: a non-blocking TCP connect on a socket the operation owns, to an address it owns.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use socket2::SockAddr;

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// A connection attempt: the socket and the peer's address, lent to the kernel until completion.
pub struct ConnectOp {
    socket: Rc<OwnedFd>,
    address: Box<SockAddr>,
    state: OpState,
}

impl ConnectOp {
    /// A connect of `socket` to `address`, not yet submitted.
    pub fn new(socket: Rc<OwnedFd>, address: SocketAddr) -> ConnectOp {
        ConnectOp { socket, address: Box::new(SockAddr::from(address)), state: OpState::Idle }
    }

    /// Whether the kernel may still read the address.
    pub fn owns_buffers(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Submits the connect for the connection at `key`.
    pub fn submit(&mut self, key: SlotKey, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one connect at a time");
        let fd = types::Fd(self.socket.as_raw_fd());
        let entry = opcode::Connect::new(fd, self.address.as_ptr().cast(), self.address.len()).build();
        // SAFETY: the address is a heap allocation and the descriptor an `Rc` this op owns; both
        // stay until `complete` (dropping the op earlier leaks them).
        unsafe { queue.push(entry.user_data(encode(OpKind::Connect, key))) };
        self.state = OpState::InFlight;
    }

    /// The connection is closing: the result will be ignored.
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles the completion: `None` if abandoned, else the connect's outcome.
    pub fn complete(&mut self, result: i32) -> Option<std::io::Result<()>> {
        let abandoned = self.state == OpState::Abandoned;
        self.state = OpState::Idle;
        match result {
            _ if abandoned => None,
            0 => Some(Ok(())),
            errno => Some(Err(std::io::Error::from_raw_os_error(-errno))),
        }
    }
}

impl Drop for ConnectOp {
    fn drop(&mut self) {
        if self.state.owns_buffers() {
            let address =
                std::mem::replace(&mut self.address, Box::new(SockAddr::from(SocketAddr::from(([0u8; 4], 0)))));
            leak_in_flight("connect", (address, self.socket.clone()));
        }
    }
}
