//! The framing guard on arbitrary client bytes, read in arbitrary pieces: it never panics, cuts
//! only inside the bytes it was given, and its verdict and cut point do not depend on how the
//! bytes were split into reads (the property a stream filter in front of hyper must have).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilotfish::proxy::framing::FramingGuard;

/// Feeds `data` in the given read sizes; returns the bytes handed on and the verdict.
fn run(data: &[u8], sizes: &[u8]) -> (Vec<u8>, Option<u8>) {
    let mut guard = FramingGuard::default();
    let mut handed = Vec::with_capacity(data.len() + 8);
    let mut at = 0;
    let mut k = 0;
    while at < data.len() {
        let n = sizes.get(k % sizes.len().max(1)).map_or(data.len(), |&s| usize::from(s).max(1));
        k += 1;
        let piece = &data[at..(at + n).min(data.len())];
        at += piece.len();
        match guard.scan(piece) {
            Some(cut) => {
                assert!(cut.at < piece.len(), "cut inside the read");
                handed.extend_from_slice(&piece[..cut.at]);
                handed.extend_from_slice(cut.inject);
                assert!(guard.is_off());
                break;
            }
            None => handed.extend_from_slice(piece),
        }
    }
    (handed, guard.violation().map(|v| v as u8))
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, sizes) = input;
    let whole = run(&data, &[]);
    let split = run(&data, &sizes);
    assert_eq!(whole, split, "the verdict depends on read boundaries");
});
