//! Strided views over flat slices. Logical dims are always `[B, H, N, D]`;
//! the [`Layout`] says how they sit in memory. In both layouts the last
//! dimension is contiguous, so a row (one token of one head) is a slice.

use crate::element::Element;
use crate::error::AttnError;

/// Memory order of a 4-d tensor with logical dims `[B, H, N, D]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `[B, H, N, D]`, C order (PyTorch's SDPA layout). The default.
    #[default]
    Bhnd,
    /// `[B, N, H, D]`, C order (the layout of a fused QKV projection).
    Bnhd,
}

impl Layout {
    /// Element strides of `(b, h, n)` for logical dims `[B, H, N, D]`.
    pub fn strides(&self, dims: [usize; 4]) -> [usize; 3] {
        let [_, h, n, d] = dims;
        match self {
            Layout::Bhnd => [h * n * d, n * d, d],
            Layout::Bnhd => [n * h * d, d, h * d],
        }
    }
    /// The dims in memory order, e.g. for a `.npy` header.
    pub fn memory_dims(&self, dims: [usize; 4]) -> [usize; 4] {
        let [b, h, n, d] = dims;
        match self {
            Layout::Bhnd => [b, h, n, d],
            Layout::Bnhd => [b, n, h, d],
        }
    }
    /// Logical dims from dims in memory order.
    pub fn logical_dims(&self, mem: [usize; 4]) -> [usize; 4] {
        // The permutation swaps H and N, so it is its own inverse.
        self.memory_dims(mem)
    }
}

fn checked_len(tensor: &'static str, dims: [usize; 4]) -> Result<usize, AttnError> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(AttnError::Overflow { tensor })
}

/// A read-only view of a 4-d tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a, T> {
    name: &'static str,
    data: &'a [T],
    dims: [usize; 4],
    strides: [usize; 3],
    layout: Layout,
}

impl<'a, T: Element> TensorView<'a, T> {
    /// A view of `data` with logical dims `[B, H, N, D]` in `layout`.
    /// `name` ("q", "k", "v") appears in every error about this tensor.
    pub fn new(
        name: &'static str,
        data: &'a [T],
        dims: [usize; 4],
        layout: Layout,
    ) -> Result<Self, AttnError> {
        let expected = checked_len(name, dims)?;
        if data.len() != expected {
            return Err(AttnError::BufferLen { tensor: name, expected, got: data.len() });
        }
        Ok(TensorView { name, data, dims, strides: layout.strides(dims), layout })
    }

    /// The tensor's name in error messages.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Logical dims `[B, H, N, D]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }
    /// Memory layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// The whole underlying buffer.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Element stride between consecutive tokens of one head.
    pub fn row_stride(&self) -> usize {
        self.strides[2]
    }
    /// Offset of row `(b, h, n)`.
    #[inline(always)]
    pub fn offset(&self, b: usize, h: usize, n: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + n * self.strides[2]
    }
    /// Row `(b, h, n)`: the `D` values of one token of one head.
    #[inline(always)]
    pub fn row(&self, b: usize, h: usize, n: usize) -> &'a [T] {
        let o = self.offset(b, h, n);
        &self.data[o..o + self.dims[3]]
    }

    /// First non-finite element, as an error naming this tensor.
    pub fn check_finite(&self) -> Result<(), AttnError> {
        match self.data.iter().position(|x| !x.to_f32().is_finite()) {
            None => Ok(()),
            Some(index) => Err(AttnError::NonFinite {
                tensor: self.name,
                index,
                value: self.data[index].to_f32(),
            }),
        }
    }
}

/// A mutable view of a 4-d f32 tensor (the output).
#[derive(Debug)]
pub struct TensorViewMut<'a> {
    name: &'static str,
    data: &'a mut [f32],
    dims: [usize; 4],
    strides: [usize; 3],
    layout: Layout,
}

impl<'a> TensorViewMut<'a> {
    /// A mutable view of `data` with logical dims `[B, H, N, D]` in `layout`.
    pub fn new(
        name: &'static str,
        data: &'a mut [f32],
        dims: [usize; 4],
        layout: Layout,
    ) -> Result<Self, AttnError> {
        let expected = checked_len(name, dims)?;
        if data.len() != expected {
            return Err(AttnError::BufferLen { tensor: name, expected, got: data.len() });
        }
        Ok(TensorViewMut { name, data, dims, strides: layout.strides(dims), layout })
    }
    /// The tensor's name in error messages.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Logical dims `[B, H, N, D]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }
    /// Memory layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Offset of row `(b, h, n)`.
    #[inline(always)]
    pub fn offset(&self, b: usize, h: usize, n: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + n * self.strides[2]
    }
    /// Element stride between consecutive tokens of one head.
    pub fn row_stride(&self) -> usize {
        self.strides[2]
    }
    /// Row `(b, h, n)`, mutable.
    #[inline(always)]
    pub fn row_mut(&mut self, b: usize, h: usize, n: usize) -> &mut [f32] {
        let o = self.offset(b, h, n);
        let d = self.dims[3];
        &mut self.data[o..o + d]
    }
    /// The whole underlying buffer.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }
    /// A writer that lets parallel tasks write *disjoint* rows.
    pub fn row_writer(&mut self) -> RowWriter<'_> {
        RowWriter {
            ptr: self.data.as_mut_ptr(),
            len: self.data.len(),
            d: self.dims[3],
            strides: self.strides,
            _life: std::marker::PhantomData,
        }
    }
}

/// Shared handle for writing disjoint output rows from several threads.
/// Obtained from [`TensorViewMut::row_writer`]; it borrows the view
/// mutably, so nothing else can read or write the rows meanwhile.
#[derive(Clone, Copy)]
pub struct RowWriter<'a> {
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

impl RowWriter<'_> {
    /// Row `(b, h, n)`.
    ///
    /// # Safety
    /// No two live references returned by this function (from any copy of
    /// this writer, on any thread) may name the same row.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut(&self, b: usize, h: usize, n: usize) -> &mut [f32] {
        let o = b * self.strides[0] + h * self.strides[1] + n * self.strides[2];
        assert!(o + self.d <= self.len, "row out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's
        // contract; the pointer came from a live `&mut [f32]` borrowed for 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(o), self.d) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_address_the_same_logical_element() {
        // logical [2, 3, 4, 5]; value = encoded logical index
        let dims = [2, 3, 4, 5];
        let mut bhnd = vec![0f32; 120];
        let mut bnhd = vec![0f32; 120];
        for b in 0..2 {
            for h in 0..3 {
                for n in 0..4 {
                    for d in 0..5 {
                        let v = (b * 1000 + h * 100 + n * 10 + d) as f32;
                        bhnd[((b * 3 + h) * 4 + n) * 5 + d] = v;
                        bnhd[((b * 4 + n) * 3 + h) * 5 + d] = v;
                    }
                }
            }
        }
        let x = TensorView::new("q", &bhnd, dims, Layout::Bhnd).unwrap();
        let y = TensorView::new("q", &bnhd, dims, Layout::Bnhd).unwrap();
        for b in 0..2 {
            for h in 0..3 {
                for n in 0..4 {
                    assert_eq!(x.row(b, h, n), y.row(b, h, n));
                }
            }
        }
        assert_eq!(Layout::Bnhd.memory_dims(dims), [2, 4, 3, 5]);
        assert_eq!(Layout::Bnhd.logical_dims([2, 4, 3, 5]), dims);
    }

    #[test]
    fn wrong_length_names_the_tensor() {
        let data = vec![0f32; 10];
        let e = TensorView::new("k", &data, [1, 2, 3, 2], Layout::Bhnd).unwrap_err();
        assert_eq!(e, AttnError::BufferLen { tensor: "k", expected: 12, got: 10 });
        assert!(e.to_string().starts_with("k: buffer has 10 elements, expected 12"));
        let mut out = vec![0f32; 3];
        let e = TensorViewMut::new("out", &mut out, [1, 1, 2, 2], Layout::Bhnd).unwrap_err();
        assert!(e.to_string().starts_with("out:"), "{e}");
    }

    #[test]
    fn non_finite_is_located() {
        let data = [0.0, 1.0, f32::NAN, 2.0];
        let v = TensorView::new("v", &data, [1, 1, 2, 2], Layout::Bhnd).unwrap();
        let e = v.check_finite().unwrap_err();
        assert!(matches!(e, AttnError::NonFinite { tensor: "v", index: 2, .. }));
        let data = [0.0, f32::NEG_INFINITY];
        let v = TensorView::new("q", &data, [1, 1, 1, 2], Layout::Bhnd).unwrap();
        assert!(v.check_finite().unwrap_err().to_string().contains("flat index 1"));
    }
}
