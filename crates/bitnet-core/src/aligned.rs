//! 64-byte-aligned, zero-initialised vectors of plain-old-data elements.
//!
//! SIMD kernels load whole cache lines; every owned tensor and activation buffer
//! uses [`AlignedVec`] so the alignment holds without per-call checks.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedVec`], in bytes (one cache line, one AVX-512 register).
pub const ALIGN: usize = 64;

mod sealed {
    pub trait Sealed {}
}

/// Element types that are valid for any bit pattern, including all zeros.
///
/// Sealed: implemented only for the primitive types below.
pub trait Pod: Copy + Default + Send + Sync + 'static + sealed::Sealed {}

macro_rules! pod {
    ($($t:ty),*) => {$(impl sealed::Sealed for $t {} impl Pod for $t {})*};
}
pod!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64, half::f16, half::bf16);

/// Reinterprets a slice of `T` as bytes.
pub fn as_bytes<T: Pod>(s: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding or invalid bit patterns; the byte length is exact
    // and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// Reinterprets bytes as a slice of `T`, or `None` when misaligned or of a ragged length.
pub fn try_cast_slice<T: Pod>(b: &[u8]) -> Option<&[T]> {
    let sz = std::mem::size_of::<T>();
    if !b.len().is_multiple_of(sz)
        || !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: alignment and length were checked above; any bit pattern is a valid `T`.
    Some(unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / sz) })
}

/// Allocations of at least this many bytes are anonymous memory maps: zero pages the OS
/// commits as they are first written, where the allocator's aligned zeroing writes every page
/// at once (a KV cache of 4,096 positions would take its whole size in memory from the start).
const MAP_BYTES: usize = 4 << 20;

/// A fixed-length, heap-allocated, 64-byte-aligned, zero-initialised `[T]`.
pub struct AlignedVec<T: Pod> {
    ptr: NonNull<T>,
    len: usize,
    /// The anonymous map holding the elements, for sizes of [`MAP_BYTES`] and more (page
    /// aligned); `None` for a heap allocation of [`AlignedVec::layout`].
    map: Option<memmap2::MmapMut>,
}

// SAFETY: AlignedVec owns its allocation exclusively, like Vec<T>; T: Send + Sync.
unsafe impl<T: Pod> Send for AlignedVec<T> {}
// SAFETY: shared access only hands out `&[T]`.
unsafe impl<T: Pod> Sync for AlignedVec<T> {}

impl<T: Pod> AlignedVec<T> {
    fn layout(len: usize) -> Layout {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("AlignedVec size overflow");
        Layout::from_size_align(bytes.max(1), ALIGN).expect("AlignedVec layout")
    }

    /// `len` zeroed elements (aborts, as `Vec` does, when the memory cannot be had).
    pub fn zeros(len: usize) -> Self {
        Self::try_zeros(len).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(len)))
    }

    /// `len` zeroed elements, or `None` when the allocator (or the OS, for a map) refuses them
    /// or the size overflows: for allocations a user sizes, such as a KV cache. From
    /// [`MAP_BYTES`] on, pages are committed as they are first written.
    pub fn try_zeros(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        if bytes >= MAP_BYTES {
            let mut map = memmap2::MmapMut::map_anon(bytes).ok()?;
            let ptr = NonNull::new(map.as_mut_ptr() as *mut T)?;
            // Maps start on a page: a multiple of ALIGN (checked, not assumed).
            return (ptr.as_ptr() as usize).is_multiple_of(ALIGN).then_some(AlignedVec {
                ptr,
                len,
                map: Some(map),
            });
        }
        let layout = Layout::from_size_align(bytes.max(1), ALIGN).ok()?;
        // SAFETY: layout has non-zero size; a null return is handled.
        let raw = unsafe { alloc_zeroed(layout) } as *mut T;
        NonNull::new(raw).map(|ptr| AlignedVec { ptr, len, map: None })
    }

    /// A copy of `src`.
    pub fn from_slice(src: &[T]) -> Self {
        let mut v = Self::zeros(src.len());
        v.copy_from_slice(src);
        v
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        as_bytes(self)
    }
}

impl<T: Pod> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        if self.map.is_some() {
            return; // the map unmaps itself
        }
        // SAFETY: ptr was allocated in `try_zeros` with exactly this layout (no map).
        unsafe { dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr is valid for len initialised (zeroed or written) elements: a heap block,
        // or the map `self.map` owns (its memory does not move with the struct).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_64_byte_aligned_and_zeroed() {
        for len in [0usize, 1, 3, 63, 64, 1000] {
            let v = AlignedVec::<f32>::zeros(len);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn try_zeros_refuses_what_cannot_be_had_instead_of_aborting() {
        assert!(AlignedVec::<f32>::try_zeros(usize::MAX).is_none()); // bytes overflow
        assert!(AlignedVec::<f32>::try_zeros(1 << 61).is_none()); // 8 EiB: no allocator gives it
        let v = AlignedVec::<f32>::try_zeros(100).unwrap();
        assert_eq!(v.len(), 100);
        assert!(v.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn large_buffers_are_maps_whose_pages_are_committed_when_written() {
        // Resident bytes of this process (Linux), else None.
        let rss = || -> Option<u64> {
            let s = std::fs::read_to_string("/proc/self/statm").ok()?;
            Some(s.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096)
        };
        let len = (64 << 20) / 4; // 64 MiB of f32
        let mut v = AlignedVec::<f32>::zeros(len);
        assert!(v.map.is_some());
        assert_eq!(v.as_ptr() as usize % ALIGN, 0);
        // Other tests' threads allocate too: margins of a quarter of the buffer.
        let before = rss();
        let w = AlignedVec::<f32>::zeros(len);
        if let (Some(a), Some(b)) = (before, rss()) {
            assert!(b < a + (16 << 20), "zeroing committed the pages up front");
        }
        v[len / 2 + 1] = 1.0;
        v.iter_mut().step_by(1024).for_each(|x| *x += 1.0);
        if let (Some(a), Some(b)) = (before, rss()) {
            assert!(b > a + (48 << 20), "writing every page commits it");
        }
        drop(w);
        assert!(v.iter().step_by(1024).all(|&x| x == 1.0));
        assert_eq!(v.iter().filter(|&&x| x != 0.0).count(), len / 1024 + 1);
        let c = v.clone();
        assert_eq!(&c[..], &v[..]);
    }

    #[test]
    fn cast_checks_length_and_alignment() {
        let v = AlignedVec::<u8>::from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 9]);
        assert_eq!(try_cast_slice::<u32>(&v[..8]).unwrap(), &[1, 2]);
        assert!(try_cast_slice::<u32>(&v[..7]).is_none());
        assert!(try_cast_slice::<u32>(&v[1..5]).is_none());
        assert_eq!(as_bytes(&[1u16, 2]), &[1, 0, 2, 0]);
    }
}
