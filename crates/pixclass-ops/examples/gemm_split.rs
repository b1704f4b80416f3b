//! GFLOP/s of the one-image GEMMs of a batch-1 forward on all threads: the
//! `gemm` crate's own threading against one column block per thread (what
//! `kernels::gemm::gemm_into` does), and one thread, in alternating rounds.
//!
//!     cargo run --release -p pixclass-ops --example gemm_split
#![allow(unsafe_code)]
use std::time::Instant;

/// `c = a·b`, all row-major, `c` with row stride `ldc`, `b` with `ldb`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    par: gemm::Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= (k - 1) * ldb + n && c.len() >= (m - 1) * ldc + n);
    // SAFETY: the three matrices lie inside their slices (asserted above)
    // and `c` is borrowed exclusively.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn main() {
    let threads = pixclass_ops::cpu_threads();
    println!("THREADS {threads}");
    // (rows, columns, depth): ResNet-101 at 224 (3x3 and 1x1 layers of
    // stages 3 and 4), then the colourization nets' per-image GEMMs.
    for (m, n, k) in [
        (256, 784, 2304),
        (1024, 784, 256),
        (256, 784, 1024),
        (512, 784, 4608),
        (64, 256, 216),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let reps = (2e10 / (2.0 * (m * n * k) as f64)) as usize + 1;
        let gflops = |t: Instant| 2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        for round in 0..4 {
            let t = Instant::now();
            for _ in 0..reps {
                gemm(
                    (m, n, k),
                    &mut c,
                    n,
                    &a,
                    &b,
                    n,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            let crate_threads = gflops(t);
            let t = Instant::now();
            for _ in 0..reps {
                let width = n / threads / 16 * 16;
                let mut rest: &mut [f32] = &mut c;
                let mut blocks = Vec::new();
                // Row-major blocks of columns need disjoint rows here, so
                // each block gets its own output (same work as in place).
                for t in 0..threads {
                    let w = if t + 1 == threads {
                        n - t * width
                    } else {
                        width
                    };
                    let (head, tail) = rest.split_at_mut(m * w);
                    blocks.push((t * width, w, head));
                    rest = tail;
                }
                let a = &a;
                rayon::scope(|s| {
                    for (j0, w, out) in blocks {
                        let b = &b[j0..];
                        s.spawn(move |_| gemm((m, w, k), out, w, a, b, n, gemm::Parallelism::None));
                    }
                });
            }
            let blocks = gflops(t);
            let t = Instant::now();
            for _ in 0..reps {
                gemm((m, n, k), &mut c, n, &a, &b, n, gemm::Parallelism::None);
            }
            let one = gflops(t);
            println!("m{m} n{n} k{k} round {round}: crate threading {crate_threads:.0} GFLOP/s, column blocks {blocks:.0}, one thread {one:.0}");
        }
    }
}
