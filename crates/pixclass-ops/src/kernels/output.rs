//! Kernel outputs written once, without a zero-fill first.
//!
//! A kernel that allocates its output with `vec![0; len]` and then writes
//! every value of it passes over that memory twice, and the zero-fill is a
//! pass with nothing to overlap it: on the UNet training step (~160 MB of
//! outputs per step) the fills took ~7 ms of 65, and zero-filling each
//! chunk just before its task writes it (in cache) cost as much. Here a
//! kernel gets its output as [`Slots`], chunks of not-yet-written values,
//! and turns each into an ordinary `&mut [T]` through one of the writers
//! below, each of which initialises every value of the chunk; a kernel that
//! accumulates into its output asks for [`Slots::zeroed`]. [`par_output`]
//! counts the values the writers initialised and hands the buffer out only
//! when that is all of them, so no code ever reads an unwritten value.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::WithDType;
use rayon::prelude::*;

/// One chunk of a kernel's output, not yet written. A writer consumes it
/// and returns the chunk as initialised values.
pub(crate) struct Slots<'a, T> {
    values: &'a mut [MaybeUninit<T>],
    written: &'a AtomicUsize,
}

impl<'a, T: WithDType> Slots<'a, T> {
    /// Values in the chunk.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// The chunk filled with zeros (for a kernel that adds into it).
    pub(crate) fn zeroed(self) -> &'a mut [T] {
        self.values.fill(MaybeUninit::new(T::zero()));
        // SAFETY: every value was initialised just above.
        #[allow(unsafe_code)]
        unsafe {
            self.assume_written()
        }
    }

    /// The chunk filled with the first [`Self::len`] of `values`, in order
    /// (fewer is a kernel bug, caught by a panic).
    /// Inlined into the caller, so a loop over zipped slices vectorises as
    /// the same loop over `&mut [T]` does.
    #[inline(always)]
    pub(crate) fn write(self, values: impl Iterator<Item = T>) -> &'a mut [T] {
        let mut count = 0;
        for (slot, v) in self.values.iter_mut().zip(values) {
            slot.write(v);
            count += 1;
        }
        assert_eq!(count, self.values.len(), "a kernel wrote too few values");
        // SAFETY: the loop initialised `count` values from the start, which
        // is all of them (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            self.assume_written()
        }
    }

    /// The chunk as consecutive chunks of `size` values (the last one may
    /// be shorter), each written on its own.
    pub(crate) fn split(self, size: usize) -> impl Iterator<Item = Slots<'a, T>> {
        let written = self.written;
        self.values
            .chunks_mut(size.max(1))
            .map(move |values| Slots { values, written })
    }

    /// The chunk written in consecutive parts of `size` values (the last
    /// one may be shorter) by `write(index, part)`, which must write every
    /// part (a kernel bug otherwise, caught by a panic); then the whole
    /// chunk, written. Inlined into the caller, like [`Self::write`]: the
    /// parts' writer is compiled with the caller's SIMD instruction set (a
    /// kernel's `pulp` dispatch), not the crate's baseline.
    #[inline(always)]
    pub(crate) fn write_parts(
        self,
        size: usize,
        mut write: impl for<'b> FnMut(usize, Slots<'b, T>),
    ) -> &'a mut [T] {
        let parts_written = AtomicUsize::new(0);
        for (i, values) in self.values.chunks_mut(size.max(1)).enumerate() {
            write(
                i,
                Slots {
                    values,
                    written: &parts_written,
                },
            );
        }
        assert_eq!(
            parts_written.load(Ordering::Relaxed),
            self.values.len(),
            "a kernel left part of its output unwritten"
        );
        // SAFETY: every part was initialised (their total is the chunk's
        // length, checked just above; each part is counted once, when a
        // writer has initialised all of it).
        #[allow(unsafe_code)]
        unsafe {
            self.assume_written()
        }
    }

    /// The chunk's start, for a writer that initialises it through a
    /// pointer (`gemm::gemm_overwrite`).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut T {
        self.values.as_mut_ptr().cast()
    }

    /// The chunk as initialised values, counted as written.
    ///
    /// # Safety
    /// Every value of the chunk has been initialised.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn assume_written(self) -> &'a mut [T] {
        self.written.fetch_add(self.values.len(), Ordering::Relaxed);
        let ptr = std::ptr::from_mut(self.values) as *mut [T];
        // SAFETY: `MaybeUninit<T>` has the size, alignment and layout of
        // `T`, the caller guarantees every value is initialised, and the
        // result borrows the chunk exclusively for the same lifetime.
        unsafe { &mut *ptr }
    }
}

/// The chunks of an output buffer, in order, as an indexed parallel
/// iterator (`enumerate`, `zip`, `for_each_init`, `map_init` all apply).
pub(crate) type Chunks<'a, T> = rayon::iter::MapWith<
    rayon::slice::ChunksMut<'a, MaybeUninit<T>>,
    &'a AtomicUsize,
    fn(&mut &'a AtomicUsize, &'a mut [MaybeUninit<T>]) -> Slots<'a, T>,
>;

fn slots<'a, T>(written: &mut &'a AtomicUsize, values: &'a mut [MaybeUninit<T>]) -> Slots<'a, T> {
    Slots { values, written }
}

/// A kernel's output of `len` values (with room for `reserve` more to be
/// pushed without reallocating), written by `write` through chunks of
/// `chunk` values (the last one may be shorter). `write` must write every
/// chunk (a kernel bug otherwise, caught by a panic); its result comes back
/// beside the buffer.
pub(crate) fn par_output<T, R>(
    len: usize,
    chunk: usize,
    reserve: usize,
    write: impl for<'a> FnOnce(Chunks<'a, T>) -> R,
) -> (Vec<T>, R)
where
    T: WithDType,
{
    let mut out: Vec<T> = Vec::with_capacity(len + reserve);
    let written = AtomicUsize::new(0);
    let chunks: Chunks<'_, T> = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .map_with(&written, slots::<T>);
    let result = write(chunks);
    // Each chunk is handed out at most once and counted only when all of
    // its values are initialised, so a total of `len` means all are.
    assert_eq!(
        written.load(Ordering::Relaxed),
        len,
        "a kernel left part of its output unwritten"
    );
    // SAFETY: the capacity is at least `len`, and all `len` values were
    // initialised (checked just above).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len);
    }
    (out, result)
}

/// [`par_output`] for a `write` that returns nothing.
pub(crate) fn output<T: WithDType>(
    len: usize,
    chunk: usize,
    write: impl for<'a> FnOnce(Chunks<'a, T>),
) -> Vec<T> {
    par_output(len, chunk, 0, write).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arrive_in_order_and_the_buffer_keeps_what_the_writers_wrote() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (4096, 64), (1000, 1000), (7, 100)] {
            let (v, lens): (Vec<f32>, Vec<usize>) = par_output(len, chunk, 2, |chunks| {
                chunks
                    .enumerate()
                    .map(|(i, c)| {
                        let n = c.len();
                        if i % 2 == 0 {
                            c.write((0..n).map(|j| (i * chunk + j) as f32));
                        } else {
                            let z = c.zeroed();
                            assert!(z.iter().all(|&x| x == 0.0));
                            for (j, x) in z.iter_mut().enumerate() {
                                *x += (i * chunk + j) as f32;
                            }
                        }
                        n
                    })
                    .collect()
            });
            assert_eq!(lens.len(), len.div_ceil(chunk));
            assert_eq!(v, (0..len).map(|i| i as f32).collect::<Vec<_>>());
            assert!(v.capacity() >= len + 2);
        }
    }

    #[test]
    #[should_panic(expected = "unwritten")]
    fn a_chunk_left_unwritten_is_caught() {
        let _ = output::<f32>(100, 10, |chunks| {
            chunks.enumerate().for_each(|(i, c)| {
                if i != 3 {
                    c.zeroed();
                }
            });
        });
    }

    #[test]
    #[should_panic(expected = "too few")]
    fn a_short_write_is_caught() {
        let _ = output::<f32>(10, 10, |chunks| {
            chunks.for_each(|c| {
                c.write([1.0; 9].into_iter());
            });
        });
    }
}
