//! Memory for direct I/O: heap buffers aligned to the 4 KiB block, with a window that says
//! which bytes a read actually delivered.

use std::alloc::Layout;
use std::ptr::NonNull;

/// The alignment of direct-I/O buffers (a multiple of every sector size in use).
pub const IO_ALIGN: usize = strata_format::BLOCK_SIZE;

/// A block-aligned heap buffer. Its heap memory never moves, so a pointer into it stays valid
/// while the kernel works on it, wherever the `AlignedBuf` value itself is moved.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    /// The bytes `as_ref` shows: `start..start + len`.
    start: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.capacity)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// An uninitialised-free buffer of at least `capacity` bytes (rounded up to the alignment),
    /// zero-filled so no stale heap bytes can ever reach a disk or a reader.
    #[must_use]
    pub fn zeroed(capacity: usize) -> Self {
        let capacity = capacity.max(1).div_ceil(IO_ALIGN) * IO_ALIGN;
        let layout = Layout::from_size_align(capacity, IO_ALIGN).expect("buffer sizes fit a Layout");
        // Not `alloc_zeroed`: for large sizes jemalloc zeroes by returning pages to the kernel
        // (madvise), and every read then pays page faults to get them back. A memset is cheaper.
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        // SAFETY: `raw` points at `capacity` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(raw, 0, capacity) };
        Self { ptr, capacity, start: 0, len: capacity }
    }

    /// A buffer holding a copy of `data` (its capacity rounded up, the tail zero).
    #[must_use]
    pub fn copy_of(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len());
        buf.as_full_mut()[..data.len()].copy_from_slice(data);
        buf.len = data.len();
        buf
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole buffer, for the kernel or a writer.
    pub fn as_full_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points at `capacity` initialised (zeroed at allocation) bytes owned by
        // `self`, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// A raw pointer `offset` bytes into the buffer, for an io_uring entry.
    #[must_use]
    pub fn ptr_at(&mut self, offset: usize) -> *mut u8 {
        assert!(offset <= self.capacity, "offset {offset} inside a buffer of {}", self.capacity);
        // SAFETY: offset is within (or one past) the allocation.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Shows `len` bytes starting at `start`.
    pub fn set_window(&mut self, start: usize, len: usize) {
        assert!(start + len <= self.capacity, "window {start}+{len} inside a buffer of {}", self.capacity);
        self.start = start;
        self.len = len;
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the window lies inside the initialised allocation (checked by set_window).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.capacity, IO_ALIGN).expect("the layout it was allocated with");
        // SAFETY: `ptr` was allocated with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_windowed() {
        let mut buf = AlignedBuf::copy_of(b"hello");
        assert_eq!(buf.capacity(), IO_ALIGN);
        assert_eq!(buf.ptr_at(0) as usize % IO_ALIGN, 0);
        assert_eq!(buf.as_ref(), b"hello");
        buf.set_window(1, 3);
        assert_eq!(buf.as_ref(), b"ell");
        assert!(buf.as_full_mut()[5..].iter().all(|&b| b == 0));
    }
}
