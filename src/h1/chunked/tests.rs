use super::*;
use proptest::prelude::*;

fn all(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    decode_all(input, Limits::default())
}

fn body(input: &[u8]) -> Vec<u8> {
    all(input).unwrap().unwrap().0
}

#[test]
fn plain_chunks_decode_and_stop_at_the_end() {
    let input = b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1";
    let (bytes, used) = all(input).unwrap().unwrap();
    assert_eq!(bytes, b"abc0123456789");
    assert_eq!(&input[used..], b"GET / HTTP/1.1");
    assert_eq!(body(b"0\r\n\r\n"), b"");
    assert_eq!(body(b"00003\r\nabc\r\n0\r\n\r\n"), b"abc");
    assert_eq!(body(b"f\r\n0123456789abcde\r\n0\r\n\r\n").len(), 15);
}

#[test]
fn extensions_are_skipped_and_bounded() {
    assert_eq!(body(b"3;name=value\r\nabc\r\n0;last\r\n\r\n"), b"abc");
    assert_eq!(body(b"3 ;a=\"q s\"\r\nabc\r\n0\r\n\r\n"), b"abc");
    assert_eq!(body(b"3\t \r\nabc\r\n0\r\n\r\n"), b"abc");
    let limits = Limits {
        max_extension: 4,
        ..Limits::default()
    };
    assert_eq!(
        decode_all(b"3;abcd\r\nabc\r\n0\r\n\r\n", limits)
            .unwrap()
            .unwrap()
            .0,
        b"abc"
    );
    assert_eq!(
        decode_all(b"3;abcde\r\nabc\r\n0\r\n\r\n", limits),
        Err(ChunkError::ExtensionTooLong)
    );
    assert_eq!(all(b"3;a\0\r\nabc"), Err(ChunkError::Extension));
    assert_eq!(all(b"3;a\nabc"), Err(ChunkError::Extension));
}

#[test]
fn sizes_are_hex_digits_only() {
    for bad in [
        &b"+3\r\nabc\r\n"[..],
        b"-3\r\n",
        b"0x3\r\n",
        b" 3\r\n",
        b"\r\n",
        b";x\r\n",
        b"3 4\r\n",
        b"g\r\n",
    ] {
        assert_eq!(
            all(bad),
            Err(ChunkError::Size),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(all(b"10000000000000000\r\n"), Err(ChunkError::SizeOverflow));
    assert!(all(b"ffffffffffffffff\r\n").unwrap().is_none());
    assert_eq!(all(b"3\nabc"), Err(ChunkError::Size));
    assert_eq!(all(b"3\rabc"), Err(ChunkError::LineEnd));
}

#[test]
fn data_must_end_in_crlf() {
    assert_eq!(all(b"3\r\nabcd\r\n"), Err(ChunkError::DataEnd));
    assert_eq!(all(b"3\r\nabc\n0\r\n\r\n"), Err(ChunkError::DataEnd));
    assert_eq!(all(b"3\r\nabc\rx"), Err(ChunkError::DataEnd));
}

#[test]
fn trailers_are_fields_and_bounded() {
    assert_eq!(body(b"1\r\na\r\n0\r\nX-T: 1\r\nY:\r\n\r\n"), b"a");
    assert_eq!(all(b"0\r\nX-Bad trailer\r\n\r\n"), Err(ChunkError::Trailer));
    assert_eq!(all(b"0\r\n: v\r\n\r\n"), Err(ChunkError::Trailer));
    assert_eq!(all(b"0\r\nX: a\r\n b\r\n\r\n"), Err(ChunkError::Trailer));
    assert_eq!(all(b"0\r\nX: a\0\r\n\r\n"), Err(ChunkError::Trailer));
    assert_eq!(all(b"0\r\nX: a\r\r\n"), Err(ChunkError::LineEnd));
    assert_eq!(all(b"0\r\n\rx"), Err(ChunkError::LineEnd));
    let limits = Limits {
        max_trailers: 8,
        ..Limits::default()
    };
    assert!(decode_all(b"0\r\nX: 1\r\n\r\n", limits).unwrap().is_some());
    assert_eq!(
        decode_all(b"0\r\nX: 12\r\n\r\n", limits),
        Err(ChunkError::TrailersTooLarge)
    );
}

#[test]
fn an_unfinished_body_asks_for_more() {
    for cut in [
        &b""[..],
        b"3",
        b"3\r",
        b"3\r\nab",
        b"3\r\nabc\r\n",
        b"0\r\n",
        b"0\r\nX: 1\r\n",
    ] {
        assert_eq!(all(cut), Ok(None), "{:?}", String::from_utf8_lossy(cut));
    }
}

#[test]
fn decode_hands_back_at_most_one_run_of_data_per_call() {
    let mut d = Decoder::new(Limits::default());
    let input = b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
    let first = d.decode(input).unwrap();
    assert_eq!(&input[first.data.clone()], b"ab");
    assert_eq!(first.consumed, 5);
    let rest = &input[first.consumed..];
    let second = d.decode(rest).unwrap();
    assert_eq!(&rest[second.data], b"cd");
    let rest = &rest[second.consumed..];
    let end = d.decode(rest).unwrap();
    assert!(end.data.is_empty());
    assert_eq!(end.consumed, rest.len());
    assert!(d.is_done());
    assert_eq!(d.decode(b"more").unwrap().consumed, 0);
}

/// A chunked encoding of `body` cut at `sizes` (cycled), with an extension on some chunks and
/// the trailer lines given.
fn encode(body: &[u8], sizes: &[usize], ext: bool, trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let extension = if ext && i % 2 == 0 { ";x=\"y z\"" } else { "" };
        out.extend_from_slice(format!("{n:X}{extension}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    for line in trailers {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    /// Splitting a valid chunked body anywhere, any number of times, decodes the same bytes and
    /// ends at the same place; the data handed out never exceeds the input.
    #[test]
    fn any_split_decodes_the_same(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1usize..80, 1..6),
        ext in any::<bool>(),
        trailers in proptest::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,12}", 0..3),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = encode(&body, &sizes, ext, &trailers);
        let end = input.len();
        input.extend_from_slice(b"NEXT");
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut decoder = Decoder::new(Limits::default());
        let (mut out, mut used) = (Vec::new(), 0);
        for to in points {
            // the caller offers what it has read so far and not yet consumed
            while used < to && !decoder.is_done() {
                let step = decoder.decode(&input[used..to]).unwrap();
                prop_assert!(step.data.end <= step.consumed);
                out.extend_from_slice(&input[used..to][step.data]);
                used += step.consumed;
                if step.consumed == 0 {
                    break;
                }
            }
        }
        prop_assert!(decoder.is_done());
        prop_assert_eq!(used, end);
        prop_assert_eq!(out, body);
    }
}
