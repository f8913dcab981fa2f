//! Live agreement between the model's predicted mask and the corrected (reference) mask: voxel
//! counts per label of each and of their overlap, from which Dice and volumes follow. Counted
//! once when a case opens, then updated from each edit's delta (only the voxels of its box), so
//! the figures follow the user's strokes at no whole-volume cost.
//!
//! Invariants: after `of(reference, predicted)` and any sequence of `apply` calls with the
//! deltas applied to the reference (forward) or reverted (backward), the counts equal those
//! recounted from scratch; the predicted mask never changes while editing.

use super::MaskDelta;
use crate::volume::Volume;

/// Voxel counts of the reference, the prediction and their overlap, per label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    reference: Vec<u64>,
    predicted: Vec<u64>,
    both: Vec<u64>,
    reference_fg: u64,
    predicted_fg: u64,
    both_fg: u64,
}

impl Agreement {
    /// Count two masks on one grid (`None` when their sizes differ).
    pub fn of(reference: &[u8], predicted: &[u8]) -> Option<Self> {
        if reference.len() != predicted.len() {
            return None;
        }
        let mut a = Self {
            reference: vec![0; 256],
            predicted: vec![0; 256],
            both: vec![0; 256],
            reference_fg: 0,
            predicted_fg: 0,
            both_fg: 0,
        };
        for (r, p) in reference.iter().zip(predicted) {
            a.add(*r, *p, 1);
            a.predicted[*p as usize] += 1;
            a.predicted_fg += u64::from(*p > 0);
        }
        Some(a)
    }

    /// Add (`sign` 1) or remove (`sign` −1) one reference voxel of value `r` over prediction `p`.
    fn add(&mut self, r: u8, p: u8, sign: i64) {
        let bump = |c: &mut u64| *c = c.saturating_add_signed(sign);
        bump(&mut self.reference[r as usize]);
        if r == p {
            bump(&mut self.both[r as usize]);
        }
        if r > 0 {
            bump(&mut self.reference_fg);
            if p > 0 {
                bump(&mut self.both_fg);
            }
        }
    }

    /// Follow a delta applied to the reference (`forward`) or reverted (`!forward`);
    /// `predicted` is the prediction on the reference's grid.
    pub fn apply(&mut self, delta: &MaskDelta, predicted: &Volume<u8>, forward: bool) {
        let dims = predicted.dims3();
        if !delta.region.fits(dims) {
            return;
        }
        let decode = |r: &super::Rle| {
            let mut v = Vec::with_capacity(r.len());
            r.for_each(|x| v.push(x));
            v
        };
        let (old, new) = if forward {
            (decode(&delta.before), decode(&delta.after))
        } else {
            (decode(&delta.after), decode(&delta.before))
        };
        let pred = predicted.data();
        for ((idx, o), n) in delta.region.iter().zip(&old).zip(&new) {
            if o == n {
                continue;
            }
            let p = pred[idx[0] + dims[0] * (idx[1] + dims[1] * idx[2])];
            self.add(*o, p, -1);
            self.add(*n, p, 1);
        }
    }

    /// Dice of label `value` (`None` when neither mask has it).
    pub fn dice(&self, value: u8) -> Option<f64> {
        let v = value as usize;
        let total = self.reference[v] + self.predicted[v];
        (total > 0).then(|| 2.0 * self.both[v] as f64 / total as f64)
    }

    /// Dice of the foreground (any label against any label).
    pub fn foreground_dice(&self) -> Option<f64> {
        let total = self.reference_fg + self.predicted_fg;
        (total > 0).then(|| 2.0 * self.both_fg as f64 / total as f64)
    }

    /// Voxels of label `value` in the reference and in the prediction.
    pub fn counts(&self, value: u8) -> (u64, u64) {
        (
            self.reference[value as usize],
            self.predicted[value as usize],
        )
    }

    /// Label values present in either mask (foreground only), ascending.
    pub fn labels(&self) -> Vec<u8> {
        (1..=255u8)
            .filter(|v| self.reference[*v as usize] + self.predicted[*v as usize] > 0)
            .collect()
    }
}
