//! A key/value cache that lives outside the model: preallocated per layer, written in place,
//! and reorderable along the batch so beam search can follow its beams.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

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

    /// Keeps rows in the order `rows` gives (row `i` becomes old row `rows[i]`; rows may
    /// repeat), for beam search.
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        let Some(first) = self.layers.first().map(|(keys, _)| keys) else {
            return Ok(());
        };
        if first.device().is_cpu() {
            // In place, and only the filled positions of the rows that change: a fresh
            // gather would allocate, zero and copy the whole capacity of every row, every
            // step, on one core (3.4% of a 4-beam T5 run's CPU time).
            let op = ReorderRows {
                rows,
                len: self.len,
            };
            return self.layers.par_iter().try_for_each(|(keys, values)| {
                keys.inplace_op1(&op)?;
                values.inplace_op1(&op)
            });
        }
        let rows = Tensor::new(rows, first.device())?;
        for (keys, values) in &mut self.layers {
            *keys = keys.index_select(&rows, 0)?;
            *values = values.index_select(&rows, 0)?;
        }
        Ok(())
    }
}

/// Row `i` of a contiguous `(batch, heads, capacity, head_dim)` cache becomes old row
/// `rows[i]`, over its first `len` positions.
struct ReorderRows<'a> {
    rows: &'a [u32],
    len: usize,
}

impl ReorderRows<'_> {
    fn apply<T: Copy>(&self, values: &mut [T], layout: &Layout) -> Result<()> {
        let &[batch, heads, capacity, head_dim] = layout.dims() else {
            candle_core::bail!(
                "a key/value cache has 4 dimensions, not {:?}",
                layout.dims()
            );
        };
        let in_range = self.rows.len() == batch && self.rows.iter().all(|&r| (r as usize) < batch);
        let (Some((start, end)), true) = (layout.contiguous_offsets(), in_range) else {
            candle_core::bail!("cannot reorder {batch} cached rows as {:?}", self.rows);
        };
        if self.len == 0 {
            return Ok(());
        }
        let values = &mut values[start..end];
        let (head_stride, filled) = (capacity * head_dim, self.len * head_dim);
        // Where head `head` of row `row` starts.
        let at = |row: usize, head: usize| (row * heads + head) * head_stride;
        let moves: Vec<(usize, usize)> = (0..batch)
            .map(|to| (to, self.rows[to] as usize))
            .filter(|&(to, from)| to != from)
            .collect();
        // Every source is read before any row is written: a source may also move.
        let mut saved = Vec::with_capacity(moves.len() * heads * filled);
        for &(_, from) in &moves {
            for head in 0..heads {
                saved.extend_from_slice(&values[at(from, head)..][..filled]);
            }
        }
        for (&(to, _), saved) in moves.iter().zip(saved.chunks_exact(heads * filled)) {
            for (head, saved) in saved.chunks_exact(filled).enumerate() {
                values[at(to, head)..][..filled].copy_from_slice(saved);
            }
        }
        Ok(())
    }
}

impl InplaceOp1 for ReorderRows<'_> {
    fn name(&self) -> &'static str {
        "reorder-kv-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        match storage {
            CpuStorage::F32(values) => self.apply(values, layout),
            CpuStorage::F16(values) => self.apply(values, layout),
            CpuStorage::BF16(values) => self.apply(values, layout),
            CpuStorage::F64(values) => self.apply(values, layout),
            _ => candle_core::bail!("no in-place reorder for a key/value cache of this dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place reorder against a gather of the filled positions: rows that repeat,
    /// swap, stay and vanish.
    #[test]
    fn reorder_moves_the_filled_positions_of_each_row() -> Result<()> {
        let (layers, batch, heads, head_dim, capacity) = (2, 5, 3, 4, 6);
        let mut cache = KvCache::new(
            layers,
            batch,
            heads,
            head_dim,
            capacity,
            DType::F32,
            &Device::Cpu,
        )?;
        for step in 0..4 {
            for layer in 0..layers {
                let count = batch * heads * head_dim;
                let values: Vec<f32> = (0..count)
                    .map(|i| (i + 1000 * (step * layers + layer)) as f32)
                    .collect();
                let keys = Tensor::from_vec(values, (batch, heads, 1, head_dim), &Device::Cpu)?;
                cache.append(layer, &keys, &(&keys * -1.0)?)?;
            }
            cache.advance(1);
        }
        let filled = |cache: &KvCache| -> Result<Vec<Vec<f32>>> {
            (0..layers)
                .flat_map(|layer| {
                    let (keys, values) = &cache.layers[layer];
                    [keys, values].map(|t| t.narrow(2, 0, cache.len())?.flatten_all()?.to_vec1())
                })
                .collect()
        };
        let rows = [3u32, 3, 1, 0, 2];
        let gathered: Vec<Vec<f32>> = {
            let index = Tensor::new(&rows, &Device::Cpu)?;
            (0..layers)
                .flat_map(|layer| {
                    let (keys, values) = &cache.layers[layer];
                    [keys, values].map(|t| {
                        t.index_select(&index, 0)?
                            .narrow(2, 0, cache.len())?
                            .flatten_all()?
                            .to_vec1()
                    })
                })
                .collect::<Result<_>>()?
        };
        cache.reorder(&rows)?;
        assert_eq!(filled(&cache)?, gathered);
        assert_eq!(cache.len(), 4);
        assert!(cache.reorder(&[0, 1]).is_err());
        assert!(cache.reorder(&[0, 1, 2, 3, 9]).is_err());
        Ok(())
    }
}
