//! The response-head parser, heads in sequence as they come on a connection (interim answers,
//! then the final one): never panics; every span of an accepted head lies in it; a shorter
//! buffer is never a complete head; the head written back from its index parses to the same
//! answer (status, version, fields, framing, reuse).
#![no_main]

use gatehouse::h1::response::{Answer, Asked, ResponseHead};
use gatehouse::h1::{Body, Limits};
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    Limits {
        max_head: 4096,
        max_fields: 32,
        max_target: 1024,
    }
}

fn check(buf: &[u8], asked: Asked) -> Option<usize> {
    let mut head = ResponseHead::default();
    if head.parse(buf, asked, &limits()) != Ok(true) {
        return None;
    }
    assert!(head.len <= buf.len());
    let spans =
        std::iter::once(head.reason).chain(head.fields.iter().flat_map(|f| [f.name, f.value]));
    for span in spans {
        assert!(span.start <= span.end && span.end as usize <= head.len);
    }
    let mut shorter = ResponseHead::default();
    assert_eq!(
        shorter.parse(&buf[..head.len - 1], asked, &limits()),
        Ok(false)
    );
    // what RFC 9112 6.3 says, whatever the fields: no body on these
    if asked.head || matches!(head.status, 100..=199 | 204 | 304) {
        assert_eq!(head.body, Body::None);
    }
    if head.body == Body::UntilClose || head.answer != Answer::Final {
        assert!(!head.reusable);
    }

    let mut out = Vec::new();
    head.write(buf, &mut out);
    let roomy = Limits {
        max_head: 2 * 4096 + 64,
        ..limits()
    };
    let mut again = ResponseHead::default();
    assert_eq!(
        again.parse(&out, asked, &roomy),
        Ok(true),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(again.len, out.len());
    assert_eq!(
        (
            head.minor_version,
            head.status,
            head.answer,
            head.body,
            head.reusable,
            head.drop_length
        ),
        (
            again.minor_version,
            again.status,
            again.answer,
            again.body,
            again.reusable,
            again.drop_length
        )
    );
    assert_eq!(head.reason.of(buf), again.reason.of(&out));
    assert_eq!(head.fields.len(), again.fields.len());
    for (a, b) in head.fields.iter().zip(&again.fields) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.name.of(buf), b.name.of(&out));
        assert_eq!(a.value.of(buf), b.value.of(&out));
    }
    (head.answer == Answer::Interim).then_some(head.len)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: flags & 1 != 0,
        connect: flags & 2 != 0,
        upgrade: flags & 4 != 0,
    };
    for _ in 0..8 {
        match check(rest, asked) {
            Some(len) => rest = &rest[len..],
            None => return,
        }
    }
});
