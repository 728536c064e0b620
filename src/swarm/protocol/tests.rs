//! Every body round-trips, and every rejection has its test.

use super::*;

const MIB: u64 = 1 << 20;

fn node(i: u8) -> NodeUrl {
    format!("http://10.0.0.{i}:5000").parse().unwrap()
}

fn fleet() -> Fleet {
    Fleet::new((1..=5).map(node))
}

fn req(body: &str) -> Result<SwarmRequest, ProtocolError> {
    SwarmRequest::parse(body.as_bytes(), &fleet())
}

fn answer(body: &str) -> Result<SwarmAnswer, ProtocolError> {
    SwarmAnswer::parse(body.as_bytes(), &fleet(), &node(1))
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, ProtocolError>, word: &str) {
    match r {
        Err(ProtocolError::Invalid(e)) => assert!(e.contains(word), "{e}"),
        other => panic!("expected Invalid({word}), got {other:?}"),
    }
}

fn is_malformed<T: std::fmt::Debug>(r: Result<T, ProtocolError>) {
    assert!(matches!(r, Err(ProtocolError::Malformed(_))), "{r:?}");
}

fn is_stranger<T: std::fmt::Debug>(r: Result<T, ProtocolError>) {
    assert!(matches!(r, Err(ProtocolError::NotInFleet(_))), "{r:?}");
}

#[test]
fn a_swarm_request_round_trips() {
    for r in [
        SwarmRequest {
            node: node(1),
            have: 0,
            complete: false,
            need_source: true,
            uploads: Some(4),
            dropped: None,
        },
        SwarmRequest {
            node: node(2),
            have: 5 * MIB,
            complete: false,
            need_source: true,
            uploads: None,
            dropped: Some((node(3), Reason::BadPiece)),
        },
        SwarmRequest {
            node: node(2),
            have: 9,
            complete: true,
            need_source: false,
            uploads: None,
            dropped: None,
        },
    ] {
        assert_eq!(SwarmRequest::parse(&r.encode(), &fleet()), Ok(r));
    }
    // The spelling in the docs.
    let r = req(r#"{"node":"http://10.0.0.1:5000/","have":7,"complete":false,"need_source":true,"dropped":{"url":"http://10.0.0.2:5000","reason":"stall"}}"#).unwrap();
    assert_eq!(r.dropped, Some((node(2), Reason::Stall)));
    assert_eq!(r.node, node(1));
}

#[test]
fn swarm_request_rejections() {
    is_malformed(req(""));
    is_malformed(req("[]"));
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false}"#,
    ));
    // Unknown fields, wrong types, negative or huge numbers.
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"x":1}"#,
    ));
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":-1,"complete":false,"need_source":true}"#,
    ));
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":1e30,"complete":false,"need_source":true}"#,
    ));
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":"1","complete":false,"need_source":true}"#,
    ));
    is_malformed(req(
        r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"dropped":{"url":"http://10.0.0.2:5000","reason":"stall","why":1}}"#,
    ));
    // Strangers: the caller, or the source it names.
    is_stranger(req(
        r#"{"node":"http://10.0.0.9:5000","have":1,"complete":false,"need_source":true}"#,
    ));
    is_stranger(req(
        r#"{"node":"http://10.0.0.1:5000/v2/","have":1,"complete":false,"need_source":true}"#,
    ));
    is_stranger(req(
        r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"dropped":{"url":"http://evil:80","reason":"stall"}}"#,
    ));
    // Impossible combinations.
    is_invalid(
        req(
            r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"uploads":0}"#,
        ),
        "uploads",
    );
    is_invalid(
        req(
            r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"uploads":65}"#,
        ),
        "uploads",
    );
    is_invalid(
        req(r#"{"node":"http://10.0.0.1:5000","have":1,"complete":true,"need_source":true}"#),
        "complete",
    );
    is_invalid(
        req(
            r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"dropped":{"url":"http://10.0.0.1:5000","reason":"stall"}}"#,
        ),
        "own source",
    );
    is_invalid(
        req(
            r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true,"dropped":{"url":"http://10.0.0.2:5000","reason":"tired"}}"#,
        ),
        "reason",
    );
    is_invalid(
        req(
            r#"{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":false,"dropped":{"url":"http://10.0.0.2:5000","reason":"stall"}}"#,
        ),
        "needs another",
    );
    // Over the limit, even if it were valid JSON.
    let big = format!(
        r#"{{"node":"http://10.0.0.1:5000","have":1,"complete":false,"need_source":true{}}}"#,
        " ".repeat(MAX_SMALL_BODY)
    );
    assert_eq!(req(&big), Err(ProtocolError::TooLarge(MAX_SMALL_BODY)));
}

#[test]
fn a_swarm_answer_round_trips() {
    let layout = Layout::new(10 * MIB);
    for source in [
        None,
        Some(Assignment::Parent),
        Some(Assignment::Node {
            url: node(2),
            have: 3 * MIB,
            complete: false,
        }),
        Some(Assignment::Node {
            url: node(3),
            have: 10 * MIB,
            complete: true,
        }),
    ] {
        let a = SwarmAnswer { layout, source };
        assert_eq!(SwarmAnswer::parse(&a.encode(), &fleet(), &node(1)), Ok(a));
    }
    let a = answer(r#"{"size":10,"piece_size":1048576,"source":"parent"}"#).unwrap();
    assert_eq!(a.source, Some(Assignment::Parent));
}

#[test]
fn swarm_answer_rejections() {
    is_malformed(answer(r#"{"size":10}"#));
    is_malformed(answer(r#"{"size":10,"piece_size":1048576,"extra":true}"#));
    is_malformed(answer(r#"{"size":10,"piece_size":1048576,"source":7}"#));
    is_malformed(answer(
        r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.2:5000","have":1,"complete":false,"more":1}}"#,
    ));
    is_invalid(answer(r#"{"size":10,"piece_size":2097152}"#), "rule");
    is_invalid(answer(r#"{"size":10,"piece_size":0}"#), "rule");
    is_invalid(
        answer(r#"{"size":10,"piece_size":1048576,"source":"upstream"}"#),
        "unknown source",
    );
    // A URL outside the fleet, or not an origin, or this node itself.
    for url in [
        "http://192.0.2.1:5000",
        "http://10.0.0.2:5000/elsewhere",
        "http://user:pw@10.0.0.2:5000",
        "file:///etc/passwd",
    ] {
        let body = format!(
            r#"{{"size":10,"piece_size":1048576,"source":{{"url":"{url}","have":1,"complete":false}}}}"#
        );
        is_stranger(answer(&body));
    }
    is_invalid(
        answer(
            r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.1:5000","have":1,"complete":false}}"#,
        ),
        "own source",
    );
    // Progress beyond the blob, or complete without all of it.
    is_invalid(
        answer(
            r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.2:5000","have":11,"complete":false}}"#,
        ),
        "source with",
    );
    is_invalid(
        answer(
            r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.2:5000","have":9,"complete":true}}"#,
        ),
        "complete",
    );
    let big = " ".repeat(MAX_SMALL_BODY + 1);
    assert_eq!(answer(&big), Err(ProtocolError::TooLarge(MAX_SMALL_BODY)));
}

fn table(size: u64, known: u32) -> PieceTable {
    let mut t = PieceTable::new(Layout::new(size));
    let hashes: Vec<PieceHash> = (0..known).map(|k| [k as u8; 32]).collect();
    t.extend(0, &hashes).unwrap();
    t
}

#[test]
fn pieces_round_trip() {
    for (size, known, first) in [(3 * MIB, 2, 0), (3 * MIB, 3, 1), (3 * MIB, 3, 3), (0, 0, 0)] {
        let p = Pieces::of(&table(size, known), first);
        assert_eq!(p.first, first);
        assert_eq!(Pieces::parse(&p.encode(), size), Ok(p));
    }
    // Asked from past what is known: from what is known, no hashes.
    let p = Pieces::of(&table(3 * MIB, 1), 2);
    assert_eq!((p.first, p.hashes.len(), p.complete), (1, 0, false));
    // The largest table fits the limit.
    let size = 4096 * MIB;
    let p = Pieces::of(&table(size, 4096), 0);
    let body = p.encode();
    assert!(body.len() <= MAX_PIECES_BODY, "{}", body.len());
    assert_eq!(Pieces::parse(&body, size), Ok(p));
}

#[test]
fn pieces_rejections() {
    let h = "ab".repeat(32);
    let parse = |s: &str| Pieces::parse(s.as_bytes(), 3 * MIB);
    let ok = format!(
        r#"{{"size":3145728,"piece_size":1048576,"first":0,"hashes":["{h}"],"complete":false}}"#
    );
    assert!(parse(&ok).is_ok());
    is_malformed(parse(
        &ok.replace("\"complete\":false", "\"complete\":false,\"x\":0"),
    ));
    is_malformed(parse(&ok.replace("\"first\":0", "\"first\":-1")));
    is_invalid(Pieces::parse(ok.as_bytes(), 3 * MIB + 1), "blob of");
    is_invalid(parse(&ok.replace("1048576", "2097152")), "rule");
    // Hashes past the last piece, a lying `complete` either way.
    let four = format!(r#"["{h}","{h}","{h}","{h}"]"#);
    is_invalid(
        parse(&ok.replace(&format!(r#"["{h}"]"#), &four)),
        "up to piece",
    );
    is_invalid(
        parse(&ok.replace("\"first\":0", "\"first\":3")),
        "up to piece",
    );
    is_invalid(parse(&ok.replace("false", "true")), "complete");
    let three = format!(r#"["{h}","{h}","{h}"]"#);
    is_invalid(
        parse(&ok.replace(&format!(r#"["{h}"]"#), &three)),
        "complete",
    );
    // Not a sha256: short, long, upper case, not hex.
    for bad in [
        "ab".repeat(31),
        "ab".repeat(33),
        "AB".repeat(32),
        "zz".repeat(32),
        format!("{}é", "a".repeat(62)),
    ] {
        is_invalid(parse(&ok.replace(&h, &bad)), "sha256");
    }
    let big = " ".repeat(MAX_PIECES_BODY + 1);
    assert_eq!(parse(&big), Err(ProtocolError::TooLarge(MAX_PIECES_BODY)));
}

#[test]
fn the_pieces_query() {
    assert_eq!(pieces_from(None), Ok(0));
    assert_eq!(pieces_from(Some("")), Ok(0));
    assert_eq!(pieces_from(Some("from=17")), Ok(17));
    assert_eq!(pieces_from(Some("from=4096")), Ok(4096));
    is_invalid(pieces_from(Some("from=4097")), "past");
    is_invalid(pieces_from(Some("from=-1")), "piece number");
    is_invalid(pieces_from(Some("from=")), "piece number");
    is_invalid(pieces_from(Some("from=1&from=2")), "unexpected");
    is_invalid(pieces_from(Some("to=1")), "unexpected");
    is_invalid(pieces_from(Some("from")), "unexpected");
}

#[test]
fn holders_round_trip_and_rejections() {
    let note = HolderNote { node: node(2) };
    assert_eq!(HolderNote::parse(&note.encode(), &fleet()), Ok(note));
    is_stranger(HolderNote::parse(
        br#"{"node":"http://10.9.9.9:5000"}"#,
        &fleet(),
    ));
    is_malformed(HolderNote::parse(
        br#"{"node":"http://10.0.0.2:5000","x":1}"#,
        &fleet(),
    ));
    is_malformed(HolderNote::parse(br#"{}"#, &fleet()));

    let h = Holders {
        holders: vec![node(2), node(3)],
    };
    assert_eq!(Holders::parse(&h.encode(), &fleet(), &node(1)), Ok(h));
    // This node and repeats are left out; a stranger refuses the whole answer.
    let mine = Holders {
        holders: vec![node(1), node(2), node(2)],
    };
    assert_eq!(
        Holders::parse(&mine.encode(), &fleet(), &node(1))
            .unwrap()
            .holders,
        vec![node(2)]
    );
    is_stranger(Holders::parse(
        br#"{"holders":["http://10.0.0.2:5000","http://169.254.169.254"]}"#,
        &fleet(),
        &node(1),
    ));
    let many = format!(
        r#"{{"holders":[{}]}}"#,
        vec![r#""http://10.0.0.2:5000""#; 17].join(",")
    );
    is_invalid(
        Holders::parse(many.as_bytes(), &fleet(), &node(1)),
        "holders",
    );
    is_malformed(Holders::parse(br#"{"holders":"x"}"#, &fleet(), &node(1)));
}

#[test]
fn errors_say_what() {
    assert_eq!(ProtocolError::TooLarge(8).to_string(), "body over 8 bytes");
    assert!(
        ProtocolError::Malformed("eof".into())
            .to_string()
            .contains("eof")
    );
    assert!(
        ProtocolError::NotInFleet("x is not".into())
            .to_string()
            .contains("x is not")
    );
    assert!(
        ProtocolError::Invalid("why".into())
            .to_string()
            .contains("why")
    );
}

#[test]
fn a_request_is_applied_to_the_tracker() {
    let f = fleet();
    let d = berth_digest();
    let layout = Layout::new(10 * MIB);
    let mut t = Tracker::default();
    let now = std::time::Instant::now();
    let ask = |n: u8, have: u64| SwarmRequest {
        node: node(n),
        have,
        complete: false,
        need_source: true,
        uploads: Some(1),
        dropped: None,
    };
    // A holder, then a node that asks: it gets the holder.
    let hold = SwarmRequest {
        complete: true,
        need_source: false,
        ..ask(1, 10 * MIB)
    };
    assert_eq!(
        hold.apply(&mut t, &d, layout, &f, now).unwrap().source,
        None
    );
    let a = ask(2, 0).apply(&mut t, &d, layout, &f, now).unwrap();
    assert_eq!(a.layout, layout);
    assert_eq!(
        a.source,
        Some(Assignment::Node {
            url: node(1),
            have: 10 * MIB,
            complete: true
        })
    );
    // A plain report keeps it.
    let report = SwarmRequest {
        need_source: false,
        ..ask(2, MIB)
    };
    assert_eq!(
        report.apply(&mut t, &d, layout, &f, now).unwrap().source,
        None
    );
    // Dropping it for a bad piece: the parent, and node 1 is never named again.
    let dropped = SwarmRequest {
        dropped: Some((node(1), Reason::BadPiece)),
        ..ask(2, MIB)
    };
    assert_eq!(
        dropped.apply(&mut t, &d, layout, &f, now).unwrap().source,
        Some(Assignment::Parent)
    );
    let a = ask(3, 0).apply(&mut t, &d, layout, &f, now).unwrap();
    assert_ne!(
        a.source,
        Some(Assignment::Node {
            url: node(1),
            have: 10 * MIB,
            complete: true
        })
    );
    // Numbers that do not fit the blob, and a node the tracker's fleet does not know.
    assert!(matches!(
        ask(4, 11 * MIB).apply(&mut t, &d, layout, &f, now),
        Err(ApplyError::Invalid(_))
    ));
    let short = SwarmRequest {
        complete: true,
        need_source: false,
        ..ask(4, MIB)
    };
    assert!(matches!(
        short.apply(&mut t, &d, layout, &f, now),
        Err(ApplyError::Invalid(_))
    ));
    let smaller = Fleet::new([node(1)]);
    assert!(matches!(
        ask(4, 0).apply(&mut t, &d, layout, &smaller, now),
        Err(ApplyError::Refused(Refused::NotInFleet(_)))
    ));
}

fn berth_digest() -> Digest {
    Digest::of(b"a layer")
}
