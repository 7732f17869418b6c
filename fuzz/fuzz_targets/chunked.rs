//! The chunked decoder: never panics; decoding in one piece, byte by byte, or split at a point
//! the input chooses gives the same body, the same end and the same error; the body is never
//! longer than the input it came from; a decoded body encoded again (one chunk) decodes the same.
#![no_main]

use gatehouse::h1::chunked::{decode_all, ChunkError, Decoder, Limits};
use libfuzzer_sys::fuzz_target;

type Outcome = Result<Option<(Vec<u8>, usize)>, ChunkError>;

/// Offers `input` to a decoder in pieces ending at `cuts` (then the rest), as a connection would.
fn in_pieces(input: &[u8], cuts: impl Iterator<Item = usize>, limits: Limits) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let (mut body, mut used) = (Vec::new(), 0);
    for to in cuts.chain(std::iter::once(input.len())) {
        let to = to.clamp(used, input.len());
        while used < to && !decoder.is_done() {
            let step = decoder.decode(&input[used..to])?;
            assert!(step.consumed <= to - used);
            assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
            body.extend_from_slice(&input[used..to][step.data]);
            used += step.consumed;
            if step.consumed == 0 {
                break;
            }
        }
    }
    Ok(decoder.is_done().then_some((body, used)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_extension: 64,
        max_trailers: 256,
    };
    let whole = decode_all(input, limits);
    let cut = input.len() * usize::from(seed) / 255;
    assert_eq!(in_pieces(input, [cut].into_iter(), limits), whole);
    if input.len() <= 512 {
        assert_eq!(in_pieces(input, 1..input.len(), limits), whole);
    }
    if let Ok(Some((body, used))) = &whole {
        assert!(*used <= input.len());
        assert!(body.len() <= *used);
        let mut again = format!("{:x}\r\n", body.len()).into_bytes();
        if body.is_empty() {
            again.clear();
        } else {
            again.extend_from_slice(body);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            decode_all(&again, limits),
            Ok(Some((body.clone(), again.len())))
        );
    }
});
