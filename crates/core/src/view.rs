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
    /// One handle per `(b, h)`, in `b`-major order, each writing only the
    /// rows of its head: the safe way to fill heads from parallel tasks.
    pub fn heads_mut(&mut self) -> Vec<HeadRowsMut<'_>> {
        let [nb, nh, n, d] = self.dims;
        let ptr = self.data.as_mut_ptr();
        let mut v = Vec::with_capacity(nb * nh);
        for b in 0..nb {
            for h in 0..nh {
                v.push(HeadRowsMut {
                    ptr,
                    len: self.data.len(),
                    base: b * self.strides[0] + h * self.strides[1],
                    stride: self.strides[2],
                    n,
                    d,
                    batch: b,
                    head: h,
                    _life: std::marker::PhantomData,
                });
            }
        }
        v
    }
}

/// The rows of one head `(b, h)` of a [`TensorViewMut`], from
/// [`TensorViewMut::heads_mut`].
#[derive(Debug)]
pub struct HeadRowsMut<'a> {
    ptr: *mut f32,
    len: usize,
    base: usize,
    stride: usize,
    n: usize,
    d: usize,
    batch: usize,
    head: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a handle only reaches the rows of its own (b, h), which no other
// handle reaches (rows of distinct heads are disjoint in every layout), and
// it borrows the view mutably for 'a.
unsafe impl Send for HeadRowsMut<'_> {}

impl HeadRowsMut<'_> {
    /// Batch entry `b`.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Head `h`.
    pub fn head(&self) -> usize {
        self.head
    }
    /// Row `n` of this head.
    pub fn row_mut(&mut self, n: usize) -> &mut [f32] {
        assert!(n < self.n, "row {n} out of {} rows", self.n);
        let o = self.base + n * self.stride;
        assert!(o + self.d <= self.len, "row out of bounds");
        // SAFETY: in bounds (checked); the rows of this head belong to this
        // handle alone (see the Send impl), and `&mut self` makes the
        // returned row the only live one from this handle.
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
    fn heads_mut_reach_their_own_rows() {
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let dims = [2, 3, 4, 5];
            let mut data = vec![0f32; 120];
            let mut view = TensorViewMut::new("out", &mut data, dims, layout).unwrap();
            for mut hr in view.heads_mut() {
                for n in 0..4 {
                    let v = (hr.batch() * 100 + hr.head() * 10 + n) as f32;
                    hr.row_mut(n).fill(v);
                }
            }
            let r = TensorView::new("out", &data, dims, layout).unwrap();
            for (b, h, n) in
                (0..2).flat_map(|b| (0..3).flat_map(move |h| (0..4).map(move |n| (b, h, n))))
            {
                assert!(r.row(b, h, n).iter().all(|&x| x == (b * 100 + h * 10 + n) as f32));
            }
        }
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
