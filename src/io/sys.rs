//! Sockets and threads beyond std: owned `SO_REUSEPORT` listener groups (socket2), CPU pinning
//! and `sendfile` (nix).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use socket2::{Domain, Protocol, Socket, Type};

/// Listeners that share one address, and the lock that keeps other processes out of the group.
pub struct ListenerGroup {
    /// One listener per worker, all on the same address (the kernel spreads connections).
    pub listeners: Vec<TcpListener>,
    /// The address, with the real port when port 0 was asked for.
    pub local_addr: SocketAddr,
    /// Held for the group's life: a second process asking for the same address fails on it.
    pub lock: UnixListener,
}

/// Why a listener group could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{address} is already in use (another process listens on it)")]
    InUse { address: SocketAddr, source: io::Error },
    #[error("cannot listen on {address}: {source}")]
    Io { address: SocketAddr, source: io::Error },
}

/// Binds `count` non-blocking `SO_REUSEPORT` listeners on `address`, owned by this process.
///
/// `SO_REUSEPORT` alone would let any other process of the same user join the group and take
/// a share of the connections. So first the address is bound once without it (which fails if
/// anyone listens there, in a group or not; it also picks the port when `address` has port 0),
/// and a process-wide lock named after the address is taken: an abstract Unix socket, which the
/// kernel releases when the process dies. The lock closes the window between that probe and the
/// group's first bind against another tessera; a foreign program that binds `SO_REUSEPORT` in
/// that window of a few microseconds could still join, which the probe cannot see.
pub fn owned_listener_group(address: SocketAddr, count: usize, backlog: u32) -> Result<ListenerGroup, ListenError> {
    let in_use = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            ListenError::InUse { address, source }
        } else {
            ListenError::Io { address, source }
        }
    };
    let probe = socket_for(address).map_err(|source| ListenError::Io { address, source })?;
    probe.set_reuse_address(true).map_err(|source| ListenError::Io { address, source })?;
    probe.bind(&address.into()).map_err(in_use)?;
    let local_addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| ListenError::Io { address, source: io::Error::other("bound socket has no address") })?;
    let name = format!("tessera-listen-{local_addr}");
    let lock_address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|source| ListenError::Io { address, source })?;
    let lock = UnixListener::bind_addr(&lock_address).map_err(|source| in_use(source_as_in_use(source)))?;
    drop(probe);
    let mut listeners = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        listeners.push(reuseport_listener(local_addr, backlog).map_err(in_use)?);
    }
    Ok(ListenerGroup { listeners, local_addr, lock })
}

/// The lock's own "in use" is the address's.
fn source_as_in_use(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::AddrInUse {
        error
    } else {
        io::Error::new(io::ErrorKind::AddrInUse, error)
    }
}

fn socket_for(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A non-blocking listener on `address` with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn reuseport_listener(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket_for(address)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu} is beyond cpu_set_t")))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Hands `length` bytes of `file` from `offset` on to `socket` (non-blocking) without copying
/// them: the socket references the file's pages. Returns how many bytes it took (0 never means
/// "try again": that is `WouldBlock`).
pub fn send_file(socket: impl AsFd, file: impl AsFd, offset: u64, length: usize) -> io::Result<usize> {
    let mut offset = i64::try_from(offset).map_err(|_| io::Error::other("file offset past i64"))?;
    nix::sys::sendfile::sendfile64(socket, file, Some(&mut offset), length).map_err(io::Error::from)
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `None` when it cannot be read or
/// is empty.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// CPUs this process may run on, in order (falls back to 0..available_parallelism).
pub fn allowed_cpus() -> Vec<usize> {
    let fallback = || (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else { return fallback() };
    let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect();
    if cpus.is_empty() {
        fallback()
    } else {
        cpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_group_on_the_same_address_is_refused_naming_it() {
        let first = owned_listener_group("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        assert_eq!(first.listeners.len(), 2);
        let error = owned_listener_group(first.local_addr, 1, 16).err().expect("the address is taken");
        assert!(matches!(error, ListenError::InUse { .. }), "{error:?}");
        assert!(error.to_string().contains(&first.local_addr.to_string()), "{error}");
    }

    #[test]
    fn a_foreign_listener_is_seen_by_the_probe() {
        let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = foreign.local_addr().unwrap();
        assert!(matches!(owned_listener_group(address, 1, 16), Err(ListenError::InUse { .. })));
    }

    #[test]
    fn allowed_cpus_are_pinnable() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let cpu = cpus[0];
        std::thread::spawn(move || pin_current_thread(cpu)).join().unwrap().unwrap();
    }
}
