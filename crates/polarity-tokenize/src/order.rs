//! Stage 2: grouping examples into batches.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use serde::{Deserialize, Serialize};

use crate::TokenizeError;

/// Decides which examples (by index) form each batch, given their token lengths.
pub trait BatchOrder {
    /// Batches of indices into `lengths`; every index appears exactly once.
    fn batches(&self, lengths: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>, TokenizeError>;
}

/// Examples in their given order (evaluation).
#[derive(Clone, Copy, Debug, Default)]
pub struct InOrder;

/// A seeded random order (plain shuffled training batches).
#[derive(Clone, Copy, Debug)]
pub struct Shuffled {
    /// The shuffle seed.
    pub seed: u64,
}

/// Length bucketing: shuffle, cut into chunks of `chunk_batches` batches, sort each chunk by length,
/// cut it into batches, then shuffle the batch order.
///
/// Rows of similar length share a batch, so padding to the batch's longest row wastes little, while
/// the chunking keeps the order random enough for SGD.
#[derive(Clone, Copy, Debug)]
pub struct LengthBucketed {
    /// The shuffle seed.
    pub seed: u64,
    /// Batches per sorted chunk (50 by default).
    pub chunk_batches: usize,
}

impl LengthBucketed {
    /// Bucketing with 50 batches per chunk.
    pub fn new(seed: u64) -> Self {
        Self { seed, chunk_batches: 50 }
    }
}

fn check(batch_size: usize) -> Result<(), TokenizeError> {
    if batch_size == 0 { Err(TokenizeError::ZeroBatchSize) } else { Ok(()) }
}

impl BatchOrder for InOrder {
    fn batches(&self, lengths: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>, TokenizeError> {
        check(batch_size)?;
        let order: Vec<usize> = (0..lengths.len()).collect();
        Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
    }
}

impl BatchOrder for Shuffled {
    fn batches(&self, lengths: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>, TokenizeError> {
        check(batch_size)?;
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.seed));
        Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
    }
}

impl BatchOrder for LengthBucketed {
    fn batches(&self, lengths: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>, TokenizeError> {
        check(batch_size)?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut rng);
        let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
        for chunk in order.chunks_mut(batch_size.saturating_mul(self.chunk_batches.max(1))) {
            // Stable sort on a shuffled chunk: ties stay in random order.
            chunk.sort_by_key(|&i| lengths[i]);
            batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        Ok(batches)
    }
}

/// The fraction of positions that are padding when each batch is padded to its longest row.
///
/// ```
/// use polarity_tokenize::padding_fraction;
/// // Batch [3, 1] pads to 3+3: 2 of 6 positions are padding.
/// assert_eq!(padding_fraction(&[3, 1], &[vec![0, 1]]), 2.0 / 6.0);
/// ```
pub fn padding_fraction(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let (mut padded, mut real) = (0usize, 0usize);
    for batch in batches {
        let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        padded += longest * batch.len();
        real += batch.iter().map(|&i| lengths[i]).sum::<usize>();
    }
    if padded == 0 { 0.0 } else { (padded - real) as f64 / padded as f64 }
}

/// The padding that length-bucketed batches save over shuffled ones, for token lengths truncated at
/// `max_length` (`dataset_stats` prints it per split).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaddingReport {
    /// Rows per batch.
    pub batch_size: usize,
    /// The truncation length.
    pub max_length: usize,
    /// Share of padded positions with shuffled batches padded to their longest row.
    pub shuffled_fraction: f64,
    /// The same with [`LengthBucketed`] batches.
    pub bucketed_fraction: f64,
    /// `1 - bucketed / shuffled` padded positions per real token.
    pub saved_fraction: f64,
}

impl PaddingReport {
    /// The report for untruncated `lengths`, batches seeded with `seed`.
    pub fn of(lengths: &[usize], batch_size: usize, max_length: usize, seed: u64) -> Result<Self, TokenizeError> {
        let truncated: Vec<usize> = lengths.iter().map(|&n| n.min(max_length)).collect();
        let shuffled = padding_fraction(&truncated, &Shuffled { seed }.batches(&truncated, batch_size)?);
        let bucketed = padding_fraction(&truncated, &LengthBucketed::new(seed).batches(&truncated, batch_size)?);
        // Padded positions per real token: p / (1 - p); the saving compares those.
        let waste = |p: f64| p / (1.0 - p);
        let saved_fraction = if shuffled > 0.0 { 1.0 - waste(bucketed) / waste(shuffled) } else { 0.0 };
        Ok(Self { batch_size, max_length, shuffled_fraction: shuffled, bucketed_fraction: bucketed, saved_fraction })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_partition(batches: &[Vec<usize>], n: usize) -> bool {
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        all == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn every_order_is_a_partition_of_the_indices() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 500 + 1).collect();
        for batches in [
            InOrder.batches(&lengths, 8).unwrap(),
            Shuffled { seed: 1 }.batches(&lengths, 8).unwrap(),
            LengthBucketed { seed: 1, chunk_batches: 4 }.batches(&lengths, 8).unwrap(),
        ] {
            assert!(is_partition(&batches, lengths.len()));
            assert_eq!(batches.len(), 13);
            assert!(batches.iter().all(|b| b.len() <= 8));
        }
        assert!(matches!(InOrder.batches(&lengths, 0), Err(TokenizeError::ZeroBatchSize)));
    }

    #[test]
    fn bucketing_cuts_padding_and_is_seeded() {
        let lengths: Vec<usize> = (0..2000).map(|i| ((i * 7919) % 997) + 10).collect();
        let random = Shuffled { seed: 3 }.batches(&lengths, 32).unwrap();
        let bucketed = LengthBucketed::new(3).batches(&lengths, 32).unwrap();
        let (random_pad, bucketed_pad) = (padding_fraction(&lengths, &random), padding_fraction(&lengths, &bucketed));
        assert!(bucketed_pad < random_pad / 4.0, "bucketed {bucketed_pad} vs random {random_pad}");
        assert_eq!(bucketed, LengthBucketed::new(3).batches(&lengths, 32).unwrap());
        assert_ne!(bucketed, LengthBucketed::new(4).batches(&lengths, 32).unwrap());
    }
}
