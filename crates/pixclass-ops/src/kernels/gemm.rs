//! The GEMM behind every convolution kernel (`gemm`, the crate candle
//! uses), with its bounds checked before the crate's one `unsafe` call, and
//! the threading and layout rules the convolution kernels share.

use candle_core::WithDType;

/// `c[m×n] = (accumulate ? c : 0) + a·b` with `c` given by (slice, row
/// stride; columns contiguous) and `a` `m×k`, `b` `k×n` by (slice, row
/// stride, column stride). Bounds are checked before the call, which makes
/// the unsafe GEMM call sound.
#[allow(unsafe_code, clippy::too_many_arguments)]
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
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three matrices lie inside their slices (checked above); `c`
    // is exclusively borrowed; T is f32 or f64 (checked by the callers).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
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
