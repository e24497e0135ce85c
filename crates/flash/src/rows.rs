//! Writers through which parallel workers fill *disjoint* parts of one
//! output: rows of the output view and entries of the LSE buffer.

use attn_core::TensorViewMut;

/// Shared handle for writing disjoint output rows from several threads.
/// It borrows the view mutably, so nothing else reads or writes the rows
/// meanwhile.
#[derive(Clone, Copy)]
pub(crate) struct RowWriter<'a> {
    ptr: *mut f32,
    len: usize,
    d: usize,
    strides: [usize; 3],
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a RowWriter only hands out rows through `row_mut`, whose contract
// makes callers write disjoint rows; the buffer outlives 'a.
unsafe impl Send for RowWriter<'_> {}
// SAFETY: as above; shared use is what it exists for.
unsafe impl Sync for RowWriter<'_> {}

impl<'a> RowWriter<'a> {
    pub(crate) fn new(out: &'a mut TensorViewMut<'_>) -> Self {
        let (dims, layout) = (out.dims(), out.layout());
        let data = out.data_mut();
        RowWriter {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            d: dims[3],
            strides: layout.strides(dims),
            _life: std::marker::PhantomData,
        }
    }

    /// Row `(b, h, n)`.
    ///
    /// # Safety
    /// No two live references returned by this function (from any copy of
    /// this writer, on any thread) may name the same row.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row_mut(&self, b: usize, h: usize, n: usize) -> &mut [f32] {
        let o = b * self.strides[0] + h * self.strides[1] + n * self.strides[2];
        assert!(o + self.d <= self.len, "row out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's
        // contract; the pointer came from a live `&mut [f32]` borrowed for 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(o), self.d) }
    }
}

/// LSE output shared by workers that write disjoint entries.
#[derive(Clone, Copy)]
pub(crate) struct LseWriter<'a> {
    ptr: *mut f32,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: workers write disjoint entries (each item owns its rows' LSE);
// the buffer outlives the writer.
unsafe impl Send for LseWriter<'_> {}
// SAFETY: as above.
unsafe impl Sync for LseWriter<'_> {}

impl<'a> LseWriter<'a> {
    pub(crate) fn new(lse: Option<&'a mut [f32]>) -> Self {
        match lse {
            Some(s) => LseWriter { ptr: s.as_mut_ptr(), len: s.len(), _life: Default::default() },
            None => LseWriter { ptr: std::ptr::null_mut(), len: 0, _life: Default::default() },
        }
    }
    /// # Safety
    /// No other thread writes entry `i` concurrently.
    #[inline]
    pub(crate) unsafe fn write(&self, i: usize, x: f32) {
        if !self.ptr.is_null() {
            assert!(i < self.len, "lse index out of bounds");
            // SAFETY: in bounds (checked); exclusive per the caller's contract.
            unsafe { *self.ptr.add(i) = x };
        }
    }
}
