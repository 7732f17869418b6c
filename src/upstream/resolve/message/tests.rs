use super::*;

/// Encodes a name without compression.
fn name(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in text.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A pointer to the question's name, which always starts right after the header.
const TO_QUESTION: [u8; 2] = [0xc0, 12];

fn rr(owner: &[u8], rtype: u16, data: &[u8]) -> Vec<u8> {
    let mut out = owner.to_vec();
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&300u32.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The reply to `query(id, qname, qtype)` with the given flags (QR is added) and answers.
fn reply(id: u16, flags: u16, qname: &str, qtype: QType, answers: &[Vec<u8>]) -> Vec<u8> {
    let mut out = query(id, qname, qtype).unwrap();
    out[2..4].copy_from_slice(&(flags | FLAG_QR | FLAG_RD).to_be_bytes());
    out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for answer in answers {
        out.extend_from_slice(answer);
    }
    out
}

fn ips(list: &[&str]) -> Answer {
    Answer::Addrs(list.iter().map(|s| s.parse().unwrap()).collect())
}

#[test]
fn query_is_one_recursive_question() {
    let q = query(0xbeef, "api.test.", QType::Aaaa).unwrap();
    let mut want = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    want.extend(name("api.test"));
    want.extend([0, 28, 0, 1]);
    assert_eq!(q, want);
    assert_eq!(query(1, "a..b", QType::A), None);
    assert_eq!(query(1, &"x".repeat(64), QType::A), None);
    assert_eq!(query(1, "", QType::A), None);
}

#[test]
fn a_records_with_compressed_owner() {
    let answers = [
        rr(&TO_QUESTION, TYPE_A, &[127, 0, 0, 1]),
        rr(&TO_QUESTION, TYPE_A, &[127, 0, 0, 2]),
    ];
    let msg = reply(7, 0, "api.test", QType::A, &answers);
    let got = parse(7, "API.test", QType::A, &msg);
    assert_eq!(got, Ok(ips(&["127.0.0.1", "127.0.0.2"])));
}

#[test]
fn aaaa_records_and_empty_answers() {
    let v6: [u8; 16] = "fd00::5".parse::<Ipv6Addr>().unwrap().octets();
    let msg = reply(
        9,
        0,
        "api.test",
        QType::Aaaa,
        &[rr(&TO_QUESTION, TYPE_AAAA, &v6)],
    );
    assert_eq!(
        parse(9, "api.test", QType::Aaaa, &msg),
        Ok(ips(&["fd00::5"]))
    );
    let msg = reply(9, 0, "api.test", QType::Aaaa, &[]);
    assert_eq!(parse(9, "api.test", QType::Aaaa, &msg), Ok(ips(&[])));
}

#[test]
fn follows_the_cname_chain_only() {
    let answers = [
        rr(&TO_QUESTION, TYPE_CNAME, &name("web.internal")),
        rr(&name("web.internal"), TYPE_CNAME, &name("node.internal")),
        rr(&name("node.internal"), TYPE_A, &[10, 0, 0, 7]),
        rr(&name("elsewhere.test"), TYPE_A, &[10, 6, 6, 6]),
    ];
    let msg = reply(3, 0, "api.test", QType::A, &answers);
    assert_eq!(parse(3, "api.test", QType::A, &msg), Ok(ips(&["10.0.0.7"])));
}

#[test]
fn status_codes() {
    let msg = reply(5, 3, "api.test", QType::A, &[]);
    assert_eq!(parse(5, "api.test", QType::A, &msg), Ok(Answer::NoSuchName));
    let msg = reply(5, 2, "api.test", QType::A, &[]);
    let err = parse(5, "api.test", QType::A, &msg).unwrap_err();
    assert_eq!(err, MessageError::Rcode(2));
    assert_eq!(err.to_string(), "the DNS server answered SERVFAIL");
    let msg = reply(5, FLAG_TC, "api.test", QType::A, &[]);
    assert_eq!(parse(5, "api.test", QType::A, &msg), Ok(Answer::Truncated));
}

#[test]
fn answers_to_other_questions_are_not_ours() {
    let msg = reply(5, 0, "api.test", QType::A, &[]);
    let not_ours = Err(MessageError::NotOurs);
    assert_eq!(parse(6, "api.test", QType::A, &msg), not_ours);
    assert_eq!(parse(5, "web.test", QType::A, &msg), not_ours);
    assert_eq!(parse(5, "api.test", QType::Aaaa, &msg), not_ours);
    // our own query echoed back (QR clear)
    let echoed = query(5, "api.test", QType::A).unwrap();
    assert_eq!(parse(5, "api.test", QType::A, &echoed), not_ours);
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let good = reply(
        5,
        0,
        "api.test",
        QType::A,
        &[rr(&TO_QUESTION, TYPE_A, &[1, 2, 3, 4])],
    );
    for cut in 0..good.len() {
        let got = parse(5, "api.test", QType::A, &good[..cut]);
        assert!(got.is_err(), "cut at {cut}: {got:?}");
    }
    // an A record of 3 bytes
    let msg = reply(
        5,
        0,
        "api.test",
        QType::A,
        &[rr(&TO_QUESTION, TYPE_A, &[1, 2, 3])],
    );
    assert_eq!(
        parse(5, "api.test", QType::A, &msg),
        Err(MessageError::Malformed)
    );
    // a compression pointer to itself, and one forward
    for pointer in [[0xc0, 26], [0xc0, 40]] {
        let msg = reply(
            5,
            0,
            "api.test",
            QType::A,
            &[rr(&pointer, TYPE_A, &[1, 2, 3, 4])],
        );
        assert_eq!(
            parse(5, "api.test", QType::A, &msg),
            Err(MessageError::Malformed)
        );
    }
}
