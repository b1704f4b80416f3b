//! Reference sums, geometries and test values shared by the kernels' unit
//! tests.

use super::Geometry;

/// A 3x3 "same" geometry with dilation `d` (padding `d`, stride 1).
pub(crate) fn same3x3(n: usize, c: usize, (h, w): (usize, usize), d: usize) -> Geometry {
    Geometry {
        n,
        c,
        h,
        w,
        kh: 3,
        kw: 3,
        stride: 1,
        dilation: d,
        pad_top: d,
        pad_left: d,
        ho: h,
        wo: w,
    }
}

/// The direct 3x3 sum with dilation `d` and padding `d`, in f64.
pub(crate) fn direct3x3(
    x: &[f64],
    w: &[f64],
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
    d: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; n * cout * h * wd];
    for i in 0..n {
        for o in 0..cout {
            for oy in 0..h {
                for ox in 0..wd {
                    let mut s = 0.0;
                    for c in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy + ky * d) as isize - d as isize;
                                let ix = (ox + kx * d) as isize - d as isize;
                                if (0..h as isize).contains(&iy) && (0..wd as isize).contains(&ix) {
                                    s += w[((o * cin + c) * 3 + ky) * 3 + kx]
                                        * x[((i * cin + c) * h + iy as usize) * wd + ix as usize];
                                }
                            }
                        }
                    }
                    y[((i * cout + o) * h + oy) * wd + ox] = s;
                }
            }
        }
    }
    y
}

/// Deterministic values in [-1, 1).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// `Σ a_i·b_i`.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Asserts that `got` is the bias-free sum `want` plus output channel `o`'s
/// `bias[o]` (outputs `[N, cout, HW]`, `hw` pixels per channel).
pub(crate) fn assert_biased(got: &[f64], want: &[f64], bias: &[f64], hw: usize, what: &str) {
    let cout = bias.len();
    assert_eq!(got.len(), want.len(), "{what}: output length");
    for (k, (g, e)) in got.iter().zip(want).enumerate() {
        let o = (k / hw) % cout;
        assert!(
            (g - e - bias[o]).abs() < 1e-12,
            "forward {what}: {g} vs {e}"
        );
    }
}

/// Asserts that two sides of an adjoint identity (`<A x, y> = <x, A* y>`)
/// agree to rounding.
pub(crate) fn assert_adjoint(lhs: f64, rhs: f64, what: &str) {
    assert!(
        (lhs - rhs).abs() < 1e-9 * lhs.abs().max(rhs.abs()).max(1.0),
        "adjoint {what}: {lhs} vs {rhs}"
    );
}
