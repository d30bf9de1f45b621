//! Reading weights out of memory-mapped safetensors files.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::weight_cache::WeightCache;
use crate::error::Error;

/// A checkpoint's named tensors (candle's `VarBuilder`, under a prefix), and the packed
/// weight cache where the CPU kernels will use one.
#[derive(Clone)]
pub struct Weights<'a> {
    tensors: VarBuilder<'a>,
    cache: Option<Arc<WeightCache>>,
}

impl<'a> Weights<'a> {
    /// The tensors under `prefix.` (`pp` for "push prefix", as candle names it).
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Weights {
            tensors: self.tensors.pp(prefix),
            cache: self.cache.clone(),
        }
    }

    /// The tensor `name` under this prefix, which must have `shape`.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.tensors.get(shape, name)
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_tensor(name)
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.tensors.dtype()
    }

    /// The device tensors are loaded to.
    pub fn device(&self) -> &Device {
        self.tensors.device()
    }

    /// The full name of the tensor `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        match self.tensors.prefix() {
            prefix if prefix.is_empty() => name.to_string(),
            prefix => format!("{prefix}.{name}"),
        }
    }

    /// The packed weight cache, if the layers go through one.
    pub(crate) fn cache(&self) -> Option<&WeightCache> {
        self.cache.as_deref()
    }

    /// Ends a load that went well: the packed weights of a first load are written for later
    /// ones to map.
    pub fn finish(&self) {
        if let Some(cache) = &self.cache {
            cache.commit();
        }
    }
}

#[cfg(test)]
impl Weights<'_> {
    /// These tensors with `cache`.
    pub(crate) fn with_cache(self, cache: WeightCache) -> Self {
        Weights {
            cache: Some(Arc::new(cache)),
            ..self
        }
    }
}

/// Tensors from anywhere (e.g. random weights in a `VarMap`), without a cache.
impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(tensors: VarBuilder<'a>) -> Self {
        Weights {
            tensors,
            cache: None,
        }
    }
}

/// Memory-maps safetensors files, with the packed weight `cache` if any. Each file is
/// checked on its own first, so that a truncated or corrupt one is named.
pub fn mmap_weights(
    paths: &[PathBuf],
    dtype: DType,
    device: &Device,
    cache: Option<WeightCache>,
) -> crate::error::Result<Weights<'static>> {
    for path in paths {
        // SAFETY: the mapping is read-only; like every mmap user we rely on the file not being
        // truncated underneath us while it is open.
        unsafe { MmapedSafetensors::new(path) }.map_err(|source| Error::Weights {
            path: path.clone(),
            source,
        })?;
    }
    // SAFETY: as above.
    let files = unsafe { MmapedSafetensors::multi(paths) }?;
    let tensors = VarBuilder::from_backend(Box::new(MappedWeights(files)), dtype, device.clone());
    Ok(Weights {
        tensors,
        cache: cache.map(Arc::new),
    })
}

/// candle's own backend for mapped files, except that f32 weights bound for the CPU are
/// copied out of the mapping on every core in one pass: loading is mostly that copy, and
/// the kernel zeroes each fresh page on the thread that first touches it.
struct MappedWeights(MmapedSafetensors);

impl SimpleBackend for MappedWeights {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let stored = Shape::from(self.0.get(name)?.shape());
        if stored != shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: stored,
            }
            .bt());
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let view = self.0.get(name)?;
        let tensor =
            if dev.is_cpu() && dtype == DType::F32 && view.dtype() == safetensors::Dtype::F32 {
                Tensor::from_vec(f32_values(view.data()), view.shape(), dev)?
            } else {
                view.load(dev)?.to_dtype(dtype)?
            };
        release_pages(view.data());
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Unmaps the whole pages of `bytes` from this process once they have been copied out. The
/// page cache keeps them (a later read maps them again), but they stop counting towards
/// this process's resident memory, which would otherwise hold every weight twice.
fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 {
            return;
        }
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside a read-only file mapping that stays mapped; after
            // MADV_DONTNEED a read faults the same file contents back in.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// Little-endian f32 bytes as values, decoded in parallel.
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    // Values per task: large enough to amortize the hand-off.
    const TASK: usize = 1 << 16;
    let len = bytes.len() / 4;
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(TASK)
        .zip(bytes.par_chunks(TASK * 4))
        .for_each(|(values, bytes)| {
            for (value, bytes) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                value.write(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
            }
        });
    // SAFETY: the loop above wrote every one of the `len` values.
    unsafe { values.set_len(len) };
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_values_decode_every_value_at_any_alignment() {
        let want: Vec<f32> = (0..200_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut bytes = vec![0u8];
        bytes.extend(want.iter().flat_map(|v| v.to_le_bytes()));
        // Offset by one byte: safetensors does not promise aligned data.
        assert_eq!(f32_values(&bytes[1..]), want);
    }
}
