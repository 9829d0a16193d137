//! The HTTP/1.1 engine's parse of arbitrary bytes as a connection reads them, in arbitrary
//! pieces: a request (head, then body) and a response must get the same verdict whatever the read
//! boundaries, and nothing may panic. The first byte picks the read size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilotfish::proxy::h1::verdict_in_reads;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let step = usize::from(first % 64) + 1;
    for response in [false, true] {
        assert_eq!(verdict_in_reads(bytes, bytes.len(), response), verdict_in_reads(bytes, step, response));
    }
});
