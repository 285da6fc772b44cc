//! Seeded subsets, shuffles and validation splits.
//!
//! IMDB's files are sorted by label, so every subset here is shuffled after it is drawn: a batch of
//! the first rows would otherwise hold one label only.

use polarity_core::{Example, Sentiment};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::{DataError, ImdbDataset};

impl ImdbDataset {
    /// A seeded, label-balanced subset of `size` examples: `size / 2` negatives and the rest positives,
    /// drawn without replacement and shuffled together. The same seed always gives the same subset.
    ///
    /// Asking for more of a label than the data holds is [`DataError::SubsetTooLarge`].
    pub fn balanced_subset(&self, size: usize, seed: u64) -> Result<ImdbDataset, DataError> {
        let mut subsets = self.balanced_subsets(&[size], seed)?;
        Ok(subsets.remove(0))
    }

    /// Disjoint seeded, label-balanced subsets of the given sizes (say a training set and a validation
    /// set drawn from one split). The first subset is exactly [`balanced_subset`](Self::balanced_subset)'s
    /// for the same seed, so adding a validation set leaves the training set unchanged.
    ///
    /// ```
    /// use polarity_core::{Example, Sentiment};
    /// use polarity_data::ImdbDataset;
    ///
    /// let examples = (0..40).map(|i| Example::new(format!("review {i}"), Sentiment::ALL[i % 2])).collect();
    /// let data = ImdbDataset::new("toy", examples)?;
    /// let subsets = data.balanced_subsets(&[20, 10], 7)?;
    /// assert_eq!(subsets[0], data.balanced_subset(20, 7)?);
    /// assert_eq!(subsets[1].label_counts(), [5, 5]);
    /// assert!(subsets[1].texts().iter().all(|text| !subsets[0].texts().contains(text)));
    /// # Ok::<(), polarity_data::DataError>(())
    /// ```
    pub fn balanced_subsets(&self, sizes: &[usize], seed: u64) -> Result<Vec<ImdbDataset>, DataError> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Sizes come from flags: sum them without overflowing, and reserve no more than the data holds.
        let requested = sizes.iter().try_fold(0usize, |sum, &size| sum.checked_add(size));
        let available = self.examples().len();
        let Some(requested) = requested else {
            return Err(DataError::SubsetSizesOverflow { sizes: sizes.to_vec(), available });
        };
        let mut chosen: Vec<Vec<usize>> = sizes.iter().map(|&size| Vec::with_capacity(size.min(available))).collect();
        for label in Sentiment::ALL {
            let mut indices: Vec<usize> =
                (0..self.examples().len()).filter(|&i| self.examples()[i].label == label).collect();
            let wanted = |size: usize| [size / 2, size - size / 2][label.index()];
            // At most `requested`, so the sum cannot overflow.
            let needed: usize = sizes.iter().map(|&size| wanted(size)).sum();
            if needed > indices.len() {
                return Err(DataError::SubsetTooLarge { requested, needed, available: indices.len(), label });
            }
            indices.shuffle(&mut rng);
            let mut taken = 0;
            for (subset, &size) in chosen.iter_mut().zip(sizes) {
                subset.extend_from_slice(&indices[taken..taken + wanted(size)]);
                taken += wanted(size);
            }
        }
        chosen
            .iter_mut()
            .zip(sizes)
            .map(|(indices, &size)| {
                indices.shuffle(&mut rng);
                self.pick(indices, format!("{}[balanced {size}, seed {seed}]", self.name()))
            })
            .collect()
    }

    /// All examples in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> ImdbDataset {
        let mut order: Vec<usize> = (0..self.examples().len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let examples = order.iter().map(|&i| self.examples()[i].clone()).collect();
        // Same rows as self, so never empty.
        ImdbDataset::from_parts(format!("{}[shuffled, seed {seed}]", self.name()), examples)
    }

    /// Splits off a stratified validation set holding `fraction` of each label (rounded), seeded.
    /// Returns `(train, validation)`; a fraction that leaves either side empty is an error.
    pub fn split_validation(&self, fraction: f64, seed: u64) -> Result<(ImdbDataset, ImdbDataset), DataError> {
        let rows = self.examples().len();
        let invalid = || DataError::InvalidFraction { fraction, rows };
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(invalid());
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for label in Sentiment::ALL {
            let mut indices: Vec<usize> = (0..rows).filter(|&i| self.examples()[i].label == label).collect();
            indices.shuffle(&mut rng);
            let held_out = (indices.len() as f64 * fraction).round() as usize;
            validation.extend_from_slice(&indices[..held_out]);
            train.extend_from_slice(&indices[held_out..]);
        }
        if train.is_empty() || validation.is_empty() {
            return Err(invalid());
        }
        train.shuffle(&mut rng);
        validation.shuffle(&mut rng);
        Ok((
            self.pick(&train, format!("{}[train {:.0}%]", self.name(), (1.0 - fraction) * 100.0))?,
            self.pick(&validation, format!("{}[validation {:.0}%]", self.name(), fraction * 100.0))?,
        ))
    }

    fn pick(&self, indices: &[usize], name: String) -> Result<ImdbDataset, DataError> {
        let examples: Vec<Example> = indices.iter().map(|&i| self.examples()[i].clone()).collect();
        ImdbDataset::new(name, examples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_by_label(negatives: usize, positives: usize) -> ImdbDataset {
        let examples = (0..negatives)
            .map(|i| Example::new(format!("neg {i}"), Sentiment::Negative))
            .chain((0..positives).map(|i| Example::new(format!("pos {i}"), Sentiment::Positive)))
            .collect();
        ImdbDataset::new("sorted", examples).unwrap()
    }

    #[test]
    fn balanced_subsets_are_balanced_seeded_and_mixed() {
        let data = sorted_by_label(50, 70);
        let subset = data.balanced_subset(40, 7).unwrap();
        assert_eq!(subset.label_counts(), [20, 20]);
        assert_eq!(subset, data.balanced_subset(40, 7).unwrap());
        assert_ne!(subset.examples(), data.balanced_subset(40, 8).unwrap().examples());
        // Shuffled together: the first half is not all one label.
        let first_half = &subset.labels()[..20];
        assert!(first_half.contains(&Sentiment::Negative) && first_half.contains(&Sentiment::Positive));
        // Without replacement.
        let mut texts = subset.texts();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), 40);
        assert_eq!(data.balanced_subset(7, 1).unwrap().label_counts(), [3, 4]);
    }

    #[test]
    fn sizes_near_usize_max_are_errors_not_panics() {
        let data = sorted_by_label(5, 5);
        let err = data.balanced_subset(usize::MAX, 0).unwrap_err();
        assert!(matches!(err, DataError::SubsetTooLarge { requested: usize::MAX, .. }), "{err}");
        let err = data.balanced_subsets(&[usize::MAX, 2], 0).unwrap_err();
        assert!(matches!(err, DataError::SubsetSizesOverflow { available: 10, .. }), "{err}");
        assert!(err.to_string().contains("18446744073709551615"), "{err}");
    }

    #[test]
    fn a_subset_larger_than_the_data_names_the_short_label() {
        let err = sorted_by_label(5, 100).balanced_subset(20, 0).unwrap_err();
        match err {
            DataError::SubsetTooLarge { requested: 20, needed: 10, available: 5, label: Sentiment::Negative } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn disjoint_subsets_share_no_review_and_need_room_for_all_of_them() {
        let data = sorted_by_label(30, 30);
        let subsets = data.balanced_subsets(&[20, 10, 6], 3).unwrap();
        assert_eq!(subsets[0], data.balanced_subset(20, 3).unwrap());
        let mut texts: Vec<String> = subsets.iter().flat_map(|s| s.texts()).map(str::to_string).collect();
        assert_eq!(texts.len(), 36);
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), 36);
        assert_eq!(subsets.iter().map(|s| s.label_counts()).collect::<Vec<_>>(), [[10, 10], [5, 5], [3, 3]]);
        match data.balanced_subsets(&[40, 30], 3).unwrap_err() {
            DataError::SubsetTooLarge { requested: 70, needed: 35, available: 30, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn validation_split_is_stratified_and_disjoint() {
        let data = sorted_by_label(40, 60);
        let (train, validation) = data.split_validation(0.1, 3).unwrap();
        assert_eq!(validation.label_counts(), [4, 6]);
        assert_eq!(train.label_counts(), [36, 54]);
        assert!(validation.texts().iter().all(|t| !train.texts().contains(t)));
        assert!(matches!(data.split_validation(1.0, 3), Err(DataError::InvalidFraction { .. })));
        assert!(matches!(data.split_validation(0.001, 3), Err(DataError::InvalidFraction { .. })));
        assert_eq!(data.shuffled(1).label_counts(), [40, 60]);
    }
}
