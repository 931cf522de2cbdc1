//! Content ETag throughput next to a plain copy of the same bytes.
//!
//! `cargo bench --bench hashing`
//!
//! `memcpy` copies the buffer into a preallocated one of the same size
//! (`copy_from_slice`, both sides black-boxed): the cost of touching every
//! byte once, which is the floor any body handling pays. `content_etag` is
//! XXH3-128 over the same bytes.

use divan::Bencher;
use divan::counter::BytesCount;
use tower_media_cache::content_etag;

fn main() {
    divan::main();
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const SIZES: [usize; 4] = [KIB, 64 * KIB, MIB, 5 * MIB];

/// Not all zeroes, not trivially compressible.
fn media(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[divan::bench(args = SIZES, sample_count = 100, min_time = 0.5, max_time = 3)]
fn content_etag_xxh3_128(bencher: Bencher, len: usize) {
    let src = media(len);
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| content_etag(divan::black_box(&src)));
}

#[divan::bench(args = SIZES, sample_count = 100, min_time = 0.5, max_time = 3)]
fn memcpy(bencher: Bencher, len: usize) {
    let src = media(len);
    let mut dst = vec![0u8; len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        divan::black_box(&mut dst[..]).copy_from_slice(divan::black_box(&src[..]));
    });
}
