//! The GEMM behind every convolution kernel (`gemm`, the crate candle
//! uses), with its bounds checked before the crate's `unsafe` calls, and
//! the threading and layout rules the convolution kernels share.

use candle_core::WithDType;

/// Columns per thread below which a GEMM on several threads is left to the
/// `gemm` crate's own threading, which splits rows too (for 64x256 blocks of
/// 216 it was the faster one, `gemm_split` example). Blocks this wide
/// (less a cache line) also keep every block off the crate's paths for
/// small products (at most 64 rows and 64 columns, or 256 elements), which
/// block the sum over `k` differently.
const MIN_SPLIT_COLUMNS: usize = 256;

/// Rows below which a GEMM is not split into column blocks (see
/// [`MIN_SPLIT_COLUMNS`]).
const MIN_SPLIT_ROWS: usize = 16;

/// `c[m×n] = (accumulate ? c : 0) + a·b` with `c` given by (slice, row
/// stride; columns contiguous) and `a` `m×k`, `b` `k×n` by (slice, row
/// stride, column stride). Bounds are checked before the calls, which makes
/// the unsafe GEMM calls sound.
///
/// On several threads the columns are split into one contiguous block per
/// thread, each a single-threaded GEMM (every block packs `a` itself). For
/// the one-image GEMMs of a batch-1 forward (ResNet-101 at 224: 256-1024
/// rows, 784 columns) that was 5-25 % faster on 2 cores than the crate's
/// own threading, which synchronises its threads at every block of `k`
/// (alternating rounds of the `gemm_split` example).
/// The result is bit for bit the same: `gemm` sums over `k` in blocks that
/// depend on `k` only, so a column's dot products do not depend on which
/// block it is in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    c: (&mut [T], usize),
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (a, a_rs, a_cs) = a;
    let (b, b_rs, b_cs) = b;
    let (c, c_rs) = c;
    assert!(
        c_rs >= n && c.len() >= (m - 1) * c_rs + n,
        "gemm: output too small"
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(c_rs)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm: rhs out of bounds"
    );
    let raw = RawGemm {
        m,
        k,
        c: c.as_mut_ptr(),
        c_rs,
        a: (a.as_ptr(), a_rs, a_cs),
        b: (b.as_ptr(), b_rs, b_cs),
        accumulate,
    };
    if threads > 1 && n >= MIN_SPLIT_COLUMNS * threads && m >= MIN_SPLIT_ROWS {
        // One block per thread, a whole number of cache lines wide (the last
        // one takes the rest): disjoint parts of `c`.
        let width = n / threads / 16 * 16;
        rayon::scope(|s| {
            for t in 1..threads {
                let cols = t * width..if t + 1 == threads { n } else { (t + 1) * width };
                s.spawn(move |_| raw.run(cols, gemm::Parallelism::None));
            }
            raw.run(0..width, gemm::Parallelism::None);
        });
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        raw.run(0..n, par);
    }
}

/// One GEMM whose operands [`gemm_into`] has checked, run over a block of
/// its columns.
#[derive(Clone, Copy)]
struct RawGemm<T> {
    m: usize,
    k: usize,
    c: *mut T,
    c_rs: usize,
    a: (*const T, usize, usize),
    b: (*const T, usize, usize),
    accumulate: bool,
}

// SAFETY: the pointers come from slices borrowed for the whole of
// `gemm_into` (shared for `a` and `b`, exclusive for `c`), and the threads
// that share a `RawGemm` write disjoint column blocks of `c` (`run`).
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for RawGemm<T> {}
#[allow(unsafe_code)]
unsafe impl<T: Sync> Sync for RawGemm<T> {}

impl<T: WithDType> RawGemm<T> {
    /// `c[.., cols] = (accumulate ? c : 0) + a · b[.., cols]`.
    #[allow(unsafe_code)]
    fn run(&self, cols: std::ops::Range<usize>, par: gemm::Parallelism) {
        let (a, a_rs, a_cs) = self.a;
        let (b, b_rs, b_cs) = self.b;
        // SAFETY: `gemm_into` checked that the `m×n` output, the `m×k` lhs
        // and the `k×n` rhs lie inside their slices; `cols` is inside
        // `0..n`, so the offset pointers and the `cols.len()` columns from
        // them do too. Concurrent calls get disjoint column ranges, so no
        // element of `c` is written by two threads; T is f32 or f64 (checked
        // by the callers).
        unsafe {
            gemm::gemm(
                self.m,
                cols.len(),
                self.k,
                self.c.add(cols.start),
                1,
                self.c_rs as isize,
                self.accumulate,
                a,
                a_cs as isize,
                a_rs as isize,
                b.add(cols.start * b_cs),
                b_cs as isize,
                b_rs as isize,
                T::one(),
                T::one(),
                false,
                false,
                false,
                par,
            )
        }
    }
}

/// Threads for GEMMs inside one image: all of them when the batch is too
/// small to keep every core busy, else one (images run in parallel).
pub(crate) fn inner_threads(images: usize) -> usize {
    let t = rayon::current_num_threads();
    if images >= t {
        1
    } else {
        t
    }
}

/// Row stride of a column matrix with `ohw` columns: rounded up to a cache
/// line, plus one line. With rows exactly `ohw` long, a 32x32 image's rows
/// are 4 KiB apart and every element of a column (what the GEMM kernels and
/// their packing read together) falls into the same few cache sets; the
/// padding (never read) spreads them. Only the layout changes: the results
/// are bit for bit those of unpadded rows.
pub(crate) fn col_ld(ohw: usize) -> usize {
    ohw.next_multiple_of(16) + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column blocks on several threads give the single-threaded result bit
    /// for bit, with strided operands, a partial last block and accumulation.
    #[test]
    fn column_blocks_match_one_thread_bit_for_bit() {
        let (m, n, k) = (37, 4 * MIN_SPLIT_COLUMNS + 45, 530);
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        // `a` stored column-major (row stride 1, column stride m).
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n + 7).map(|i| val(i + 3)).collect();
        let ldc = n + 5;
        let start: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
        let run = |threads: usize, accumulate: bool| {
            let mut c = start.clone();
            gemm_into(
                m,
                n,
                k,
                (&mut c, ldc),
                (&a, 1, m),
                (&b, n, 1),
                accumulate,
                threads,
            );
            c
        };
        for accumulate in [false, true] {
            let one = run(1, accumulate);
            for threads in [2, 3, 4] {
                let many = run(threads, accumulate);
                assert!(
                    one.iter()
                        .zip(&many)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{threads} threads, accumulate {accumulate}"
                );
            }
            // Untouched padding between rows.
            assert_eq!(one[n..ldc], start[n..ldc]);
        }
    }
}
