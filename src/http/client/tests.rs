use super::*;

/// What a connection reported, flattened: (tag, status, body) per response, and the close.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    responses: Vec<(u32, u16, Vec<u8>, bool)>,
    closed: Option<(Vec<u32>, Option<ResponseError>)>,
}

fn connection(tags: &[u32], method: &'static str, limits: ClientLimits) -> Connection<u32> {
    let mut connection = Connection::new(limits);
    for &tag in tags {
        let spec = RequestSpec::to_host(method, "h".into(), format!("/{tag}"));
        connection.send_request(tag, &spec).unwrap();
    }
    connection
}

fn drain(connection: &mut Connection<u32>, seen: &mut Seen) {
    // Bounded by the input: every event consumes bytes or a request.
    while let Some(event) = connection.poll_event() {
        match event {
            Event::Head { tag, head } => seen.responses.push((*tag, head.status, Vec::new(), false)),
            Event::BodyData { tag, data } => {
                let last = seen.responses.last_mut().unwrap();
                assert_eq!(last.0, *tag);
                last.2.extend_from_slice(data);
            }
            Event::Done { tag } => {
                let last = seen.responses.last_mut().unwrap();
                assert_eq!(last.0, tag);
                last.3 = true;
            }
            Event::Closed { unanswered, error } => seen.closed = Some((unanswered, error)),
        }
    }
}

/// Feeds `parts` one after the other (then EOF if `eof`), collecting every event.
fn run(tags: &[u32], method: &'static str, limits: ClientLimits, parts: &[&[u8]], eof: bool) -> Seen {
    let mut connection = connection(tags, method, limits);
    let mut seen = Seen::default();
    for part in parts {
        connection.handle_input(part);
        drain(&mut connection, &mut seen);
    }
    if eof {
        connection.handle_eof();
        drain(&mut connection, &mut seen);
    }
    seen
}

fn ok(tag: u32, status: u16, body: &[u8]) -> (u32, u16, Vec<u8>, bool) {
    (tag, status, body.to_vec(), true)
}

#[test]
fn pipelined_requests_are_written_in_order_and_answered_by_tag() {
    let mut connection = connection(&[7, 8], "GET", ClientLimits::default());
    let wire = String::from_utf8(connection.transmit().to_vec()).unwrap();
    assert!(wire.starts_with("GET /7 HTTP/1.1\r\nHost: h\r\n"), "{wire}");
    assert_eq!(wire.matches("GET /8 HTTP/1.1\r\n").count(), 1);
    connection.transmitted(wire.len());
    assert!(connection.transmit().is_empty());
    let input = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-3/10\r\nContent-Length: 2\r\n\r\nxy";
    let mut seen = Seen::default();
    connection.handle_input(input);
    drain(&mut connection, &mut seen);
    assert_eq!(seen.responses, vec![ok(7, 200, b"abc"), ok(8, 206, b"xy")]);
    assert_eq!(seen.closed, None, "keep-alive connection stays open");
    assert!(connection.can_send());
}

#[test]
fn chunked_body_split_at_every_byte_boundary() {
    let input: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwxyz\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    for split in 0..=input.len() {
        let seen = run(&[1, 2], "GET", ClientLimits::default(), &[&input[..split], &input[split..]], false);
        assert_eq!(seen.responses, vec![ok(1, 200, b"wxyz!"), ok(2, 204, b"")], "split at {split}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let seen = run(&[1, 2], "GET", ClientLimits::default(), &bytes, false);
    assert_eq!(seen.responses, vec![ok(1, 200, b"wxyz!"), ok(2, 204, b"")], "a byte at a time");
}

#[test]
fn bad_chunks_and_bad_heads_close_with_an_error_and_hand_back_the_requests() {
    let cases: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    for input in cases {
        let seen = run(&[1, 2], "GET", ClientLimits::default(), &[input], false);
        let (unanswered, error) = seen.closed.expect("closed");
        assert_eq!(unanswered, vec![1, 2], "{}", String::from_utf8_lossy(input));
        assert!(matches!(error, Some(ResponseError::Malformed { .. } | ResponseError::BadChunk { .. })), "{error:?}");
    }
    let seen = run(&[], "GET", ClientLimits::default(), &[b"HTTP/1.1 200 OK\r\n\r\n"], false);
    assert_eq!(seen.closed, Some((vec![], Some(ResponseError::Unsolicited))));
}

#[test]
fn each_limit_is_enforced_and_named() {
    let small = ClientLimits { head_bytes_max: 64, header_count_max: 2, body_bytes_max: 4, pipeline_depth_max: 2 };
    let big_head = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(100));
    let seen = run(&[1], "GET", small, &[big_head.as_bytes()], false);
    assert_eq!(seen.closed.unwrap().1, Some(ResponseError::HeadTooLarge { limit: 64 }));
    let many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let seen = run(&[1], "GET", small, &[many], false);
    assert_eq!(seen.closed.unwrap().1, Some(ResponseError::TooManyHeaders { limit: 2 }));
    for body in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nabcde",
    ] {
        let seen = run(&[1], "GET", small, &[body], false);
        assert_eq!(seen.closed.unwrap().1, Some(ResponseError::BodyTooLarge { limit: 4 }));
    }
    let mut connection = connection(&[1, 2], "GET", small);
    let spec = RequestSpec::to_host("GET", "h".into(), "/3".into());
    assert_eq!(connection.send_request(3, &spec), Err(SendError::PipelineFull { limit: 2 }));
    assert!(SendError::PipelineFull { limit: 2 }.to_string().contains("pipeline_depth_max"));
}

#[test]
fn head_requests_and_no_content_have_no_body() {
    let input =
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
    let seen = run(&[1], "HEAD", ClientLimits::default(), &[&input[..]], false);
    assert_eq!(seen.responses, vec![ok(1, 200, b"")]);
    let mut connection = connection(&[1], "HEAD", ClientLimits::default());
    connection.send_request(2, &RequestSpec::to_host("GET", "h".into(), "/".into())).unwrap();
    let mut seen = Seen::default();
    connection.handle_input(input);
    drain(&mut connection, &mut seen);
    assert_eq!(seen.responses, vec![ok(1, 200, b""), ok(2, 304, b"")]);
}

#[test]
fn interim_responses_are_skipped() {
    let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(run(&[1], "GET", ClientLimits::default(), &[input], false).responses, vec![ok(1, 200, b"ok")]);
}

#[test]
fn eof_ends_a_close_delimited_body_and_truncates_others() {
    let seen = run(&[1], "GET", ClientLimits::default(), &[b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it"], true);
    assert_eq!(seen.responses, vec![ok(1, 200, b"all of it")]);
    assert_eq!(seen.closed, Some((vec![], None)));
    let seen = run(&[1], "GET", ClientLimits::default(), &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], true);
    assert_eq!(seen.closed, Some((vec![1], Some(ResponseError::Truncated("in the middle of a body")))));
    let seen = run(&[1], "GET", ClientLimits::default(), &[], true);
    assert_eq!(seen.closed, Some((vec![1], Some(ResponseError::Truncated("before a response head")))));
    let seen = run(&[], "GET", ClientLimits::default(), &[], true);
    assert_eq!(seen.closed, Some((vec![], None)), "an idle connection closed by the server is no error");
}

#[test]
fn connection_close_loses_pipelined_requests_without_blame() {
    let input = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n";
    let mut connection = connection(&[1, 2, 3], "GET", ClientLimits::default());
    let mut seen = Seen::default();
    connection.handle_input(input);
    drain(&mut connection, &mut seen);
    assert_eq!(seen.responses, vec![ok(1, 200, b"a")]);
    assert_eq!(seen.closed, Some((vec![2, 3], None)));
    assert!(!connection.can_send());
    let spec = RequestSpec::to_host("GET", "h".into(), "/".into());
    assert_eq!(connection.send_request(4, &spec), Err(SendError::Closing));
}

#[test]
fn bodies_can_be_received_straight_into_the_callers_buffer() {
    let mut connection = connection(&[1], "GET", ClientLimits::default());
    assert_eq!(connection.body_direct_bytes(), 0);
    connection.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
    let mut seen = Seen::default();
    drain(&mut connection, &mut seen);
    assert_eq!(seen.responses, vec![(1, 200, b"ab".to_vec(), false)]);
    assert_eq!(connection.body_direct_bytes(), 3);
    connection.handle_body_direct(2);
    assert_eq!(connection.body_direct_bytes(), 1);
    connection.handle_body_direct(1);
    drain(&mut connection, &mut seen);
    assert_eq!(seen.responses, vec![(1, 200, b"ab".to_vec(), true)], "direct bytes are not repeated");
}

#[test]
fn request_builder_refuses_header_injection() {
    let mut out = Vec::new();
    let spec = RequestSpec::to_host("GET", "h".into(), "/a\r\nX-Injected: 1".into());
    assert!(matches!(spec.write_head(&mut out), Err(SendError::BadField { name: "target", .. })));
    let spec = RequestSpec::to_host("GET", "h\r\nX: 1".into(), "/".into());
    assert!(matches!(spec.write_head(&mut out), Err(SendError::BadField { name: "host", .. })));
    let mut spec = RequestSpec::to_host("GET", "h".into(), "/".into());
    spec.fields = vec![("Range", "bytes=0-1\r\nX: 1".into())];
    assert!(matches!(spec.write_head(&mut out), Err(SendError::BadField { name: "Range", .. })));
    assert!(out.is_empty());
    let mut spec = RequestSpec::to_host("PUT", "h".into(), "/x".into());
    spec.range = Some((0, 9));
    spec.bearer = Some("t".into());
    spec.body = Some(("application/json", b"{}".to_vec()));
    spec.close = true;
    spec.fields = vec![("If-Range", "\"v1\"".into())];
    spec.write_head(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in [
        "Range: bytes=0-9\r\n",
        "Authorization: Bearer t\r\n",
        "If-Range: \"v1\"\r\n",
        "Content-Length: 2\r\n",
        "Connection: close\r\n",
    ] {
        assert!(text.contains(line), "{text}");
    }
    assert!(text.ends_with("\r\n\r\n{}"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut state = 0x2545_f491_u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let pieces: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\n",
        b"Content-Length: 3\r\n",
        b"\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"5\r\n",
        b"abc",
        b"0\r\n\r\n",
        b"\xff",
    ];
    for _ in 0..2000 {
        let mut bytes = Vec::new();
        for _ in 0..(next() % 12) {
            bytes.extend_from_slice(pieces[(next() % 8) as usize]);
        }
        fuzz_responses(&bytes, next() as usize % (bytes.len() + 1), (next() % 4) as usize);
    }
}

#[test]
fn prepared_requests_are_framed_like_built_ones_and_fields_may_be_left_out() {
    let mut connection: Connection<u32> =
        Connection::new(ClientLimits { pipeline_depth_max: 1, ..ClientLimits::default() });
    connection.keep_header_fields(false);
    connection.send_prepared(7, false).unwrap();
    assert!(connection.transmit().is_empty(), "the caller sends prepared bytes itself");
    assert_eq!(connection.send_prepared(8, false), Err(SendError::PipelineFull { limit: 1 }));
    connection.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok");
    match connection.poll_event() {
        Some(Event::Head { tag: 7, head }) => {
            assert_eq!((head.status, head.content_length), (200, Some(2)));
            assert!(head.headers.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(connection.poll_event(), Some(Event::BodyData { data: b"ok", .. })));
    assert_eq!(connection.poll_event(), Some(Event::Done { tag: 7 }));
}
