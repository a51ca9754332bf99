//! CPU tensors: a dtype, a shape and bytes that are either owned (64-byte aligned) or a
//! slice of a memory-mapped file.

use crate::aligned::{as_bytes, try_cast_slice, AlignedVec, Pod};
use crate::{DType, Error, Result, Shape};
use memmap2::Mmap;
use std::path::Path;
use std::sync::Arc;

/// Where a tensor's bytes live.
#[derive(Clone)]
pub enum Storage {
    /// Bytes owned by the tensor, 64-byte aligned.
    Owned(Arc<AlignedVec<u8>>),
    /// A byte range of a memory-mapped file (no copy).
    Mapped {
        /// The whole mapped file.
        map: Arc<Mmap>,
        /// Start of the tensor's bytes in the file.
        offset: usize,
        /// Length of the tensor's bytes.
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

/// An immutable CPU tensor. Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Shape,
    storage: Storage,
}

/// Maps a whole file read-only.
pub fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
    // truncated or rewritten by another process while mapped.
    let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(m))
}

impl Tensor {
    /// A tensor owning `bytes`; checks that the byte length matches dtype and shape.
    pub fn from_bytes(dtype: DType, shape: impl Into<Shape>, bytes: &[u8]) -> Result<Self> {
        let shape = shape.into();
        check_len(dtype, &shape, bytes.len())?;
        Ok(Tensor {
            dtype,
            shape,
            storage: Storage::Owned(Arc::new(AlignedVec::from_slice(bytes))),
        })
    }

    /// A tensor owning a copy of `data`, whose element type must match `dtype`'s size.
    pub fn from_slice<T: Pod>(dtype: DType, shape: impl Into<Shape>, data: &[T]) -> Result<Self> {
        Self::from_bytes(dtype, shape, as_bytes(data))
    }

    /// An f32 tensor from values.
    pub fn from_f32(shape: impl Into<Shape>, data: &[f32]) -> Result<Self> {
        Self::from_slice(DType::F32, shape, data)
    }

    /// A view of `len` bytes at `offset` in a mapped file, without copying.
    pub fn from_mmap(
        dtype: DType,
        shape: impl Into<Shape>,
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let shape = shape.into();
        let end = offset.checked_add(len).filter(|&e| e <= map.len()).ok_or_else(|| {
            Error::format(
                "tensor",
                format!("byte range {offset}+{len} lies outside the {}-byte file", map.len()),
            )
        })?;
        let _ = end;
        check_len(dtype, &shape, len)?;
        Ok(Tensor { dtype, shape, storage: Storage::Mapped { map, offset, len } })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dims.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
    /// Whether the bytes are a slice of a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements as `&[T]`, when `T` has the dtype's element size and the bytes are aligned.
    pub fn as_slice<T: Pod>(&self) -> Result<&[T]> {
        if self.dtype.block_len() != 1 || self.dtype.block_bytes() != std::mem::size_of::<T>() {
            return Err(Error::invalid(format!(
                "cannot view a {} tensor as {}",
                self.dtype,
                std::any::type_name::<T>()
            )));
        }
        try_cast_slice(self.bytes())
            .ok_or_else(|| Error::invalid("tensor bytes are not aligned for their element type"))
    }

    /// The elements converted to f32 (for F32, F16 and BF16 tensors).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::F32 => {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            DType::F16 => {
                b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            d => return Err(Error::unsupported(format!("converting a {d} tensor to f32"))),
        })
    }
}

fn check_len(dtype: DType, shape: &Shape, len: usize) -> Result<()> {
    let n = shape.checked_elem_count()?;
    let want = dtype.storage_bytes(n)?;
    if want != len {
        return Err(Error::shape(format!(
            "a {dtype} tensor of shape {shape} needs {want} bytes, got {len}"
        )));
    }
    Ok(())
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, {}, {})",
            self.dtype,
            self.shape,
            if self.is_mapped() { "mmap" } else { "owned" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn owned_tensor_checks_length_and_converts() {
        let t = Tensor::from_f32([2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
        assert!(t.as_slice::<u16>().is_err());
        assert!(Tensor::from_f32([2, 3], &[1.0]).is_err());
        let h: Vec<half::bf16> = [1.5f32, -2.0].iter().map(|&x| half::bf16::from_f32(x)).collect();
        let t = Tensor::from_slice(DType::BF16, [2], &h).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn mapped_tensor_is_a_view_and_bounds_are_checked() {
        let dir = std::env::temp_dir().join(format!("bitnet-core-mmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.bin");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&[0u8; 8]).unwrap();
        f.write_all(as_bytes(&[7.0f32, 8.0])).unwrap();
        drop(f);
        let m = map_file(&p).unwrap();
        let t = Tensor::from_mmap(DType::F32, [2], m.clone(), 8, 8).unwrap();
        assert!(t.is_mapped());
        assert_eq!(t.to_f32_vec().unwrap(), vec![7.0, 8.0]);
        assert!(Tensor::from_mmap(DType::F32, [2], m.clone(), 12, 8).is_err());
        assert!(Tensor::from_mmap(DType::F32, [2], m, usize::MAX, 8).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
