//! Loopback tests of the client loop, on every backend this machine has.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::*;

fn backends() -> Vec<BackendChoice> {
    let mut found = vec![BackendChoice::Epoll];
    match choose_backend(BackendChoice::Uring) {
        Ok(_) => found.push(BackendChoice::Uring),
        Err(reason) => eprintln!("io_uring unavailable here ({reason}); testing epoll only"),
    }
    found
}

fn client(choice: BackendChoice) -> ClientLoop {
    let config = ClientConfig {
        connections_max: 8,
        recv_buffer_bytes: 4096,
        ring_entries: 32,
        send_queued_bytes_max: 64 * 1024,
    };
    let client = ClientLoop::new(choice, config).unwrap();
    assert_eq!(client.backend() == Backend::Epoll, choice == BackendChoice::Epoll);
    client
}

/// Polls until `done` says so, at most 400 polls of at most 25 ms; returns every event seen.
fn poll_until(client: &mut ClientLoop, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..400 {
        client.poll(&mut seen, Some(Duration::from_millis(25))).unwrap();
        if done(&seen) {
            return seen;
        }
    }
    panic!("condition not met; events: {seen:?}");
}

/// A listener that echoes what each connection sends until it closes.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buffer = [0u8; 4096];
        while let Ok(bytes) = stream.read(&mut buffer) {
            if bytes == 0 || stream.write_all(&buffer[..bytes]).is_err() {
                break;
            }
        }
    });
    address
}

fn received(events: &[Event], conn: ConnId) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { conn: c, bytes } if *c == conn => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

#[test]
fn connect_send_and_receive_an_echo() {
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(echo_server()).unwrap();
        // Queued before the connect completes; goes out once it does, in order.
        let message: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.send(conn, message[..7].to_vec()).unwrap();
        client.send(conn, message[7..].to_vec()).unwrap();
        let events = poll_until(&mut client, |events| received(events, conn).len() >= message.len());
        assert!(matches!(events[0], Event::Connected { conn: c } if c == conn), "{choice:?}: {events:?}");
        assert_eq!(received(&events, conn), message, "{choice:?}");
        let sent: u64 =
            events.iter().filter_map(|e| if let Event::Sent { bytes, .. } = e { Some(*bytes) } else { None }).sum();
        assert_eq!(sent, message.len() as u64, "{choice:?}");
    }
}

#[test]
fn a_timer_fires_for_its_connection() {
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(echo_server()).unwrap();
        client.set_timer(conn, Duration::from_secs(3600)).unwrap();
        client.set_timer(conn, Duration::from_millis(20)).unwrap(); // replaces the first
        let events = poll_until(&mut client, |events| events.iter().any(|e| matches!(e, Event::Timer { .. })));
        let fired: Vec<_> = events.iter().filter(|e| matches!(e, Event::Timer { .. })).collect();
        assert!(matches!(fired[..], [Event::Timer { conn: c }] if *c == conn), "{choice:?}: {events:?}");
    }
}

#[test]
fn another_thread_wakes_the_loop() {
    for choice in backends() {
        let mut client = client(choice);
        let waker = client.waker();
        let thread = std::thread::spawn(move || waker.wake().unwrap());
        let mut events = Vec::new();
        for _ in 0..400 {
            // No connection and no timer: only the wake can end this wait early.
            client.poll(&mut events, Some(Duration::from_millis(25))).unwrap();
            if !events.is_empty() {
                break;
            }
        }
        thread.join().unwrap();
        assert!(matches!(events[..], [Event::Woken]), "{choice:?}: {events:?}");
    }
}

#[test]
fn a_refused_connect_is_reported_as_an_error() {
    for choice in backends() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let mut client = client(choice);
        let conn = client.connect(address).unwrap();
        let events = poll_until(&mut client, |events| events.iter().any(|e| matches!(e, Event::Closed { .. })));
        let Some(Event::Closed { conn: closed, error: Some(error) }) = events.last() else {
            panic!("{choice:?}: {events:?}")
        };
        assert_eq!(*closed, conn);
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{choice:?}");
        assert!(matches!(client.send(conn, vec![1]), Err(ClientError::Closed(_))));
    }
}

#[test]
fn close_while_a_receive_is_in_flight_keeps_its_memory_until_completion() {
    for choice in backends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = client(choice);
        let conn = client.connect(listener.local_addr().unwrap()).unwrap();
        // The backlog completes the connect; io_uring submits it at the first poll.
        poll_until(&mut client, |events| events.iter().any(|e| matches!(e, Event::Connected { .. })));
        let (mut peer, _) = listener.accept().unwrap();
        // One more turn submits the receive; the peer sends nothing, so it stays in flight.
        client.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap();
        client.close(conn);
        if choice == BackendChoice::Uring {
            // The receive still owns its buffer: the connection's slot is not freed yet.
            assert_eq!(client.connection_count(), 1);
        }
        let mut events = Vec::new();
        for _ in 0..400 {
            if client.connection_count() == 0 {
                break;
            }
            client.poll(&mut events, Some(Duration::from_millis(25))).unwrap();
        }
        assert_eq!(client.connection_count(), 0, "{choice:?}: the receive's completion frees the slot");
        assert!(events.iter().all(|e| !matches!(e, Event::Received { .. } | Event::Closed { .. })), "{events:?}");
        // The peer sees the close, and the loop serves a new connection.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(peer.read(&mut [0u8; 16]).unwrap(), 0);
        let again = client.connect(echo_server()).unwrap();
        client.send(again, b"still works".to_vec()).unwrap();
        let events = poll_until(&mut client, |events| received(events, again).len() >= 11);
        assert_eq!(received(&events, again), b"still works");
        assert_eq!(client.connection_count(), 1);
    }
}

#[test]
fn sends_past_the_queue_limit_are_refused_naming_the_sizes() {
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(echo_server()).unwrap();
        client.send(conn, vec![7; 60 * 1024]).unwrap();
        let error = client.send(conn, vec![7; 8 * 1024]).unwrap_err();
        assert!(matches!(error, ClientError::SendQueueFull { limit_bytes: 65536, .. }), "{choice:?}: {error}");
        assert!(error.to_string().contains("65536"), "{error}");
        client.send(conn, vec![7; 4 * 1024]).unwrap();
    }
}

#[test]
fn a_loop_for_few_connections_with_a_large_submission_queue_starts() {
    for choice in backends() {
        // Few connections want a completion queue smaller than the submission queue.
        let config = ClientConfig { connections_max: 1, ring_entries: 1024, ..ClientConfig::default() };
        let mut client = ClientLoop::new(choice, config).unwrap();
        let conn = client.connect(echo_server()).unwrap();
        client.send(conn, b"few".to_vec()).unwrap();
        let events = poll_until(&mut client, |events| received(events, conn).len() >= 3);
        assert_eq!(received(&events, conn), b"few", "{choice:?}");
    }
}

#[test]
fn a_connection_that_stops_receiving_gets_its_bytes_once_resumed() {
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(echo_server()).unwrap();
        client.set_receiving(conn, false).unwrap();
        let message: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        client.send(conn, message.clone()).unwrap();
        let sent = |events: &[Event]| -> u64 {
            events.iter().filter_map(|e| if let Event::Sent { bytes, .. } = e { Some(*bytes) } else { None }).sum()
        };
        let mut events = poll_until(&mut client, |events| sent(events) == message.len() as u64);
        // The echo is back in the socket by now or soon; a few more turns must not hand it over.
        for _ in 0..8 {
            client.poll(&mut events, Some(Duration::from_millis(10))).unwrap();
        }
        assert!(received(&events, conn).is_empty(), "{choice:?}: bytes received while stopped");
        client.set_receiving(conn, true).unwrap();
        let events = poll_until(&mut client, |events| received(events, conn).len() >= message.len());
        assert_eq!(received(&events, conn), message, "{choice:?}");
    }
}

/// What the server's read saw when the client ended a connection whose bytes it had all read.
fn end_seen_by_server(choice: BackendChoice, abort: bool) -> std::io::ErrorKind {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buffer = [0u8; 64];
        let request = stream.read(&mut buffer);
        assert!(matches!(request, Ok(7)), "{request:?}");
        stream.write_all(b"answer").unwrap();
        let end = match stream.read(&mut buffer) {
            Ok(0) => std::io::ErrorKind::UnexpectedEof,
            Ok(_) => std::io::ErrorKind::InvalidData,
            Err(error) => error.kind(),
        };
        tx.send(end).unwrap();
    });
    let mut client = client(choice);
    let conn = client.connect(address).unwrap();
    client.send(conn, b"request".to_vec()).unwrap();
    poll_until(&mut client, |events| received(events, conn) == b"answer");
    if abort {
        client.abort(conn);
    } else {
        client.close(conn);
    }
    // The loop lets the socket go once its operations are done.
    let mut end = None;
    poll_until(&mut client, |_| {
        end = rx.try_recv().ok();
        end.is_some()
    });
    end.unwrap()
}

#[test]
fn abort_resets_the_connection_where_close_ends_it_in_order() {
    for choice in backends() {
        assert_eq!(end_seen_by_server(choice, false), std::io::ErrorKind::UnexpectedEof, "{choice:?}: close is a FIN");
        assert_eq!(
            end_seen_by_server(choice, true),
            std::io::ErrorKind::ConnectionReset,
            "{choice:?}: abort is a reset"
        );
    }
}

/// A listener whose one connection, once it reads `go`, writes `payload` and waits for the close.
fn payload_server(payload: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut go = [0u8; 2];
        if stream.read_exact(&mut go).is_err() || stream.write_all(&payload).is_err() {
            return;
        }
        let _ = stream.read(&mut go);
    });
    address
}

#[test]
fn lent_bytes_land_in_their_place_in_order_and_never_past_it() {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    // The loans take all but the last 7 bytes, at offset 1,000 of a larger buffer; the 7 come
    // the usual way once the place is full.
    let loan_bytes = payload.len() - 7;
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(payload_server(payload.clone())).unwrap();
        let mut events = poll_until(&mut client, |events| events.iter().any(|e| matches!(e, Event::Connected { .. })));
        // Right after the events of a poll, no receive is in flight: the loan is taken.
        client.receive_into(conn, vec![0xEE; 1_000 + loan_bytes + 1_000], 1_000, loan_bytes).unwrap();
        client.send(conn, b"go".to_vec()).unwrap();
        let (mut buffer, mut filled, mut copied) = (None, 0usize, Vec::new());
        for _ in 0..2_000 {
            if filled + copied.len() == payload.len() {
                break;
            }
            events.clear();
            client.poll(&mut events, Some(Duration::from_millis(25))).unwrap();
            for event in events.drain(..) {
                match event {
                    Event::Received { bytes, .. } => {
                        assert_eq!(filled, loan_bytes, "{choice:?}: bytes copied while the place was not full");
                        copied.extend_from_slice(&bytes);
                    }
                    Event::Filled { buffer: back, start, bytes, .. } => {
                        assert_eq!(start, 1_000 + filled, "{choice:?}");
                        assert!(bytes > 0 && filled + bytes <= loan_bytes, "{choice:?}: {bytes} bytes past the loan");
                        filled += bytes;
                        buffer = Some(back);
                    }
                    Event::Closed { error, .. } => panic!("{choice:?}: closed: {error:?}"),
                    _ => {}
                }
            }
            if filled < loan_bytes {
                if let Some(lent) = buffer.take() {
                    client.receive_into(conn, lent, 1_000 + filled, loan_bytes - filled).unwrap();
                }
            }
        }
        let buffer = buffer.expect("the loan came back");
        assert_eq!((filled, copied.len()), (loan_bytes, 7), "{choice:?}");
        assert!(buffer[..1_000].iter().chain(&buffer[1_000 + loan_bytes..]).all(|&b| b == 0xEE), "{choice:?}");
        assert!(buffer[1_000..1_000 + loan_bytes] == payload[..loan_bytes], "{choice:?}: lent bytes differ");
        assert_eq!(copied, payload[loan_bytes..], "{choice:?}");
    }
}

#[test]
fn a_loan_is_refused_while_a_receive_is_in_flight_on_io_uring() {
    for choice in backends() {
        let mut client = client(choice);
        let conn = client.connect(payload_server(vec![7; 100])).unwrap();
        let mut events = poll_until(&mut client, |events| events.iter().any(|e| matches!(e, Event::Connected { .. })));
        // Nothing comes before `go`: this poll leaves a receive waiting in the kernel.
        client.poll(&mut events, Some(Duration::from_millis(10))).unwrap();
        let lent = client.receive_into(conn, vec![0; 200], 0, 200);
        match choice {
            BackendChoice::Uring => assert!(lent.is_err_and(|back| back.len() == 200), "{choice:?}"),
            _ => assert!(lent.is_ok(), "{choice:?}: epoll reads only when told, so it takes the loan"),
        }
        client.send(conn, b"go".to_vec()).unwrap();
        let events = poll_until(&mut client, |events| {
            events
                .iter()
                .map(|e| match e {
                    Event::Received { bytes, .. } => bytes.len(),
                    Event::Filled { bytes, .. } => *bytes,
                    _ => 0,
                })
                .sum::<usize>()
                >= 100
        });
        let filled = events.iter().any(|e| matches!(e, Event::Filled { start: 0, .. }));
        assert_eq!(filled, choice != BackendChoice::Uring, "{choice:?}: {events:?}");
        client.close(conn);
    }
}
