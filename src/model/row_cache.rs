//! Rows of a table that is costly to compute whole and cheap to compute in part, filled
//! on first use: the decoder's `E·W_ihᵀ` for search (see `Decoder::step`).
//!
//! Computing that table for a whole 8,000-subword vocabulary is 4 GFLOP, which was most of
//! a cold one-sentence `rnmt translate` (about 120 of 180 ms on one thread), while one
//! sentence looks up a few dozen distinct subwords. So the table is filled in blocks of
//! [`BLOCK`] consecutive rows as search asks for them. A block is always computed whole,
//! from the same inputs in the same matmul shape, so its values do not depend on which
//! sentences came first: a translation is the same in a fresh process and in a server
//! that has run for days.

use std::sync::Mutex;

use candle_core::{bail, Result};

/// Rows per block: a matmul of 32 rows runs near the gemm peak, and a sentence that
/// touches 30 blocks still computes an eighth of an 8,000-row table.
pub const BLOCK: usize = 32;

/// A `rows × width` table of f32 filled block by block on first use. Thread-safe: the
/// server's batchers share one model.
pub struct RowCache {
    rows: usize,
    /// `blocks[b]`: rows `b·BLOCK ..` row-major, once computed.
    blocks: Mutex<Vec<Option<Box<[f32]>>>>,
}

impl RowCache {
    pub fn new(rows: usize) -> Self {
        Self {
            rows,
            blocks: Mutex::new(vec![None; rows.div_ceil(BLOCK)]),
        }
    }

    /// Rows `ids` of the table, concatenated (`ids.len() × width` values, with `width`
    /// that of the blocks). `compute(start, len)` returns rows `start .. start + len`
    /// row-major; it is called once per block, the first time a row of it is asked for.
    pub fn gather(
        &self,
        ids: &[u32],
        compute: impl Fn(usize, usize) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let mut blocks = self.blocks.lock().expect("not poisoned");
        let mut out = Vec::new();
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                bail!("row {id} of a table of {} rows", self.rows);
            }
            let (b, offset) = (id / BLOCK, id % BLOCK);
            let len = BLOCK.min(self.rows - b * BLOCK);
            if blocks[b].is_none() {
                let values = compute(b * BLOCK, len)?;
                if values.is_empty() || values.len() % len != 0 {
                    bail!("{} values for a block of {len} rows", values.len());
                }
                blocks[b] = Some(values.into_boxed_slice());
            }
            let block = blocks[b].as_deref().expect("computed above");
            let width = block.len() / len;
            out.extend_from_slice(&block[offset * width..(offset + 1) * width]);
        }
        Ok(out)
    }

    /// How many blocks have been computed.
    pub fn computed_blocks(&self) -> usize {
        let blocks = self.blocks.lock().expect("not poisoned");
        blocks.iter().filter(|b| b.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Row r of the reference table: `[r, r + 0.5, r + 0.25]`.
    fn rows(start: usize, len: usize) -> Vec<f32> {
        (start..start + len)
            .flat_map(|r| [r as f32, r as f32 + 0.5, r as f32 + 0.25])
            .collect()
    }

    #[test]
    fn gathers_the_rows_asked_for_computing_each_block_once() {
        let cache = RowCache::new(70); // blocks of 32, 32 and 6 rows
        let calls = Cell::new(Vec::new());
        let compute = |start, len| {
            let mut c = calls.take();
            c.push((start, len));
            calls.set(c);
            Ok(rows(start, len))
        };
        let ids = [69u32, 0, 31, 69, 5];
        let got = cache.gather(&ids, compute).unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&r| rows(r as usize, 1)).collect();
        assert_eq!(got, want);
        assert_eq!(calls.take(), vec![(64, 6), (0, 32)]);
        assert_eq!(cache.computed_blocks(), 2);
        // Asked again, nothing is computed; a row of the middle block computes it alone.
        let got = cache.gather(&[40, 1], compute).unwrap();
        assert_eq!(got, [rows(40, 1), rows(1, 1)].concat());
        assert_eq!(calls.take(), vec![(32, 32)]);
        assert_eq!(cache.computed_blocks(), 3);
    }

    #[test]
    fn a_row_past_the_table_or_a_ragged_block_is_an_error() {
        let cache = RowCache::new(10);
        let err = cache.gather(&[10], |s, l| Ok(rows(s, l))).unwrap_err();
        assert!(
            err.to_string().contains("row 10 of a table of 10 rows"),
            "{err}"
        );
        let err = cache.gather(&[0], |_, _| Ok(vec![1.0; 7])).unwrap_err();
        assert!(
            err.to_string().contains("7 values for a block of 10 rows"),
            "{err}"
        );
        // A failed block is not recorded as computed.
        assert_eq!(cache.computed_blocks(), 0);
    }
}
