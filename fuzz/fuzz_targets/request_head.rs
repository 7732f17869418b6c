//! The request-head parser: never panics; every span of an accepted head lies in it; a shorter
//! buffer is never a complete head; the head written back from its index parses to the same
//! request (method, target, version, fields, framing, authority, keep-alive).
#![no_main]

use gatehouse::h1::request::RequestHead;
use gatehouse::h1::Limits;
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    Limits {
        max_head: 4096,
        max_fields: 32,
        max_target: 1024,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    if head.parse(data, &limits()) != Ok(true) {
        return;
    }
    assert!(head.len <= data.len());
    let spans = [head.method, head.target, head.authority]
        .into_iter()
        .chain(head.fields.iter().flat_map(|f| [f.name, f.value]));
    for span in spans {
        assert!(span.start <= span.end && span.end as usize <= head.len);
    }
    let mut shorter = RequestHead::default();
    assert_eq!(shorter.parse(&data[..head.len - 1], &limits()), Ok(false));

    let mut out = Vec::new();
    head.write(data, &mut out);
    // the written head may be longer (a space after each colon): room for it
    let roomy = Limits {
        max_head: 2 * 4096 + 64,
        ..limits()
    };
    let mut again = RequestHead::default();
    let reparsed = again.parse(&out, &roomy);
    assert_eq!(reparsed, Ok(true), "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(again.len, out.len());
    assert_eq!(head.method.of(data), again.method.of(&out));
    assert_eq!(head.target.of(data), again.target.of(&out));
    assert_eq!(head.authority.of(data), again.authority.of(&out));
    assert_eq!(
        (
            head.minor_version,
            head.form,
            head.body,
            head.connection,
            head.expects_continue
        ),
        (
            again.minor_version,
            again.form,
            again.body,
            again.connection,
            again.expects_continue
        )
    );
    assert_eq!(head.fields.len(), again.fields.len());
    for (a, b) in head.fields.iter().zip(&again.fields) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.name.of(data), b.name.of(&out));
        assert_eq!(a.value.of(data), b.value.of(&out));
    }
});
