//! Scratch vectors that outlive one parallel job: each thread keeps the
//! vectors its kernels' jobs gave back, and the next job on that thread
//! takes one instead of allocating and zero-filling a fresh one.
//!
//! rayon runs a parallel loop's `for_each_init` / `map_init` initialiser
//! once per job it splits off (~15 times per Winograd convolution of a
//! colourization step on 2 threads), so buffers created there (the
//! transformed inputs and GEMM outputs, 0.5-1 MB each) were allocated and
//! zero-filled that many times per call.

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use candle_core::WithDType;

/// Vectors a thread keeps at most (jobs nest when a waiting thread steals
/// work, each holding its own); more are freed.
const KEPT: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A vector from this thread's pool (a new, empty one when the pool has
/// none of `T`), given back when dropped. Its length and contents are
/// whatever its last user left: see [`Scratch::values`].
pub(crate) struct Scratch<T: 'static>(Vec<T>);

impl<T: 'static> Scratch<T> {
    /// A vector of this thread's pool, or a new one.
    pub(crate) fn take() -> Self {
        let kept = POOL.try_with(|pool| {
            let mut pool = pool.try_borrow_mut().ok()?;
            let i = pool.iter().position(|b| b.is::<Vec<T>>())?;
            pool.swap_remove(i).downcast::<Vec<T>>().ok()
        });
        Self(kept.ok().flatten().map(|b| *b).unwrap_or_default())
    }
}

impl<T: WithDType> Scratch<T> {
    /// The first `len` values, their contents unspecified (left from an
    /// earlier use, zero where the vector grew): for a caller that
    /// overwrites every value before reading it. The vector never shrinks,
    /// so a reused one is filled only where it is longer than before.
    pub(crate) fn values(&mut self, len: usize) -> &mut [T] {
        if self.0.len() < len {
            self.0.resize(len, T::zero());
        }
        &mut self.0[..len]
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() == 0 {
            return;
        }
        // During the thread's teardown the pool may be gone: the vector
        // is then simply freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < KEPT {
                    pool.push(Box::new(buf));
                }
            }
        });
    }
}

impl<T: 'static> Deref for Scratch<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: 'static> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_vector_is_taken_again_on_the_same_thread_and_never_shrinks() {
        let ptr = {
            let mut s = Scratch::<f32>::take();
            s.values(1000).fill(1.0);
            s.as_ptr()
        };
        let mut s = Scratch::<f32>::take();
        assert_eq!(s.as_ptr(), ptr, "the pool's vector is reused");
        // Shorter: the first values as left; longer: zero where it grew.
        assert_eq!(s.values(10), &[1.0; 10]);
        assert_eq!(s.len(), 1000);
        let v = s.values(1200);
        assert!(v[..1000].iter().all(|&x| x == 1.0) && v[1000..].iter().all(|&x| x == 0.0));
        // Another element type never gets it.
        assert!(Scratch::<f64>::take().is_empty());
    }

    #[test]
    fn a_thread_keeps_at_most_kept_vectors() {
        std::thread::spawn(|| {
            let many: Vec<Scratch<u8>> = (0..KEPT + 3)
                .map(|_| {
                    let mut s = Scratch::take();
                    s.values(4);
                    s
                })
                .collect();
            drop(many);
            POOL.with(|p| assert_eq!(p.borrow().len(), KEPT));
        })
        .join()
        .expect("the test thread panicked");
    }
}
