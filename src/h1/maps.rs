//! Header maps kept per thread between exchanges, so a warm native connection builds the
//! `HeaderMap`s of a request and its answer without allocating (each is two allocations, the
//! index and the entries). The engine takes one for a client's request head and the upstream
//! client one for the upstream's answer; each is given back once its head is written out
//! (`http::native::write_response`, the upstream client after the exchange). Cleared maps keep
//! their capacity; a map grown past `CAPACITY_KEPT` is dropped instead, and at most `KEEP` are
//! kept, so a thread holds a few KiB at most.

use http::HeaderMap;
use std::cell::RefCell;

/// At most this many kept per thread: a request and an answer in flight, twice over.
const KEEP: usize = 4;
/// A map with room for more fields than this is not kept.
const CAPACITY_KEPT: usize = 96;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `fields` fields: a kept one when one is large enough.
pub fn take(fields: usize) -> HeaderMap {
    let kept = SPARE.try_with(|spare| {
        let mut spare = spare.try_borrow_mut().ok()?;
        let at = spare.iter().position(|map| map.capacity() >= fields)?;
        Some(spare.swap_remove(at))
    });
    match kept {
        Ok(Some(map)) => map,
        _ => HeaderMap::with_capacity(fields),
    }
}

/// Keeps `map` (cleared) for a later `take`.
pub fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > CAPACITY_KEPT {
        return;
    }
    map.clear();
    keep(&SPARE, map, KEEP);
}

/// Puts `item` on this thread's spare list `list` if it holds fewer than `max` (the read
/// buffers of `upstream::conn::native` use it too). `try_with`: an item dropped while the
/// thread ends finds no list.
pub fn keep<T: 'static>(
    list: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    item: T,
    max: usize,
) {
    let _ = list.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < max {
                spare.push(item);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn maps_come_back_empty_with_their_room() {
        // this thread's spares are this test's
        while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
        let mut map = take(10);
        map.insert("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let room = map.capacity();
        give(map);
        let again = take(10);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // one too small for what is asked is left for another
        give(again);
        let big = take(room + 1);
        assert!(big.capacity() > room);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
        // one grown too large is not kept
        give(HeaderMap::with_capacity(CAPACITY_KEPT + 1));
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
    }
}
