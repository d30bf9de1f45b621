//! A key/value cache that lives outside the model: preallocated per layer, written in place,
//! and reorderable along the batch so beam search can follow its beams.

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys and values, `(batch, heads, capacity, head_dim)`.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        num_layers: usize,
        batch: usize,
        heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, heads, capacity, head_dim);
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes `keys`/`values` `(batch, heads, new, head_dim)` for `layer` after the filled
    /// positions and returns views of everything cached for it, new entries included. Call
    /// [`KvCache::advance`] once every layer has appended.
    pub fn append(&self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = keys.dim(2)?;
        if self.len + new > self.capacity {
            candle_core::bail!(
                "the key/value cache holds {} positions; {} more do not fit",
                self.capacity,
                self.len + new - self.capacity
            );
        }
        let (cached_keys, cached_values) = &self.layers[layer];
        cached_keys.slice_set(&keys.contiguous()?, 2, self.len)?;
        cached_values.slice_set(&values.contiguous()?, 2, self.len)?;
        let total = self.len + new;
        Ok((
            cached_keys.narrow(2, 0, total)?,
            cached_values.narrow(2, 0, total)?,
        ))
    }

    /// Marks `new` positions, appended by every layer, as filled.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Forgets every position from `len` on (speculative decoding drops rejected tokens);
    /// their entries are overwritten by the next append.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keeps rows in the order `rows` gives (rows may repeat), for beam search.
    pub fn reorder(&mut self, rows: &Tensor) -> Result<()> {
        for (keys, values) in &mut self.layers {
            *keys = keys.index_select(rows, 0)?;
            *values = values.index_select(rows, 0)?;
        }
        Ok(())
    }
}
