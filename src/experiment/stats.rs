//! Statistics of an experiment's report: mean ± sd, the paired sign-flip permutation test
//! between two arms over the same cases, and ROC curves.
//!
//! Invariants: the permutation test is exact (all 2ⁿ sign patterns) up to n = 16 and otherwise
//! uses 20 000 random patterns from a fixed seed, so a report's p-values are reproducible.

use rand::{RngExt, SeedableRng};

/// Mean and sample standard deviation (0 for fewer than two values); `None` when empty.
pub fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

/// The result of a paired test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedTest {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `b − a`.
    pub mean_difference: f64,
    /// Two-sided p-value of "the mean difference is 0" under random sign flips.
    pub p_value: f64,
    /// Whether every sign pattern was enumerated (else sampled).
    pub exact: bool,
}

/// Paired sign-flip permutation test of `b − a` (pairs where either is missing are dropped):
/// under the null hypothesis each difference is as likely positive as negative, so the
/// p-value is the share of sign patterns whose |mean| is at least the observed one.
pub fn paired_permutation_test(a: &[Option<f64>], b: &[Option<f64>]) -> Option<PairedTest> {
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some((*y)? - (*x)?))
        .collect();
    if d.is_empty() {
        return None;
    }
    let n = d.len();
    let observed = d.iter().sum::<f64>().abs();
    // Ties within rounding count as "at least as extreme".
    let tol = 1e-12 * (1.0 + observed);
    let (hits, total, exact) = if n <= 16 {
        let total = 1usize << n;
        let hits = (0..total)
            .filter(|mask| {
                let s: f64 = d
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if mask >> i & 1 == 1 { -v } else { *v })
                    .sum();
                s.abs() >= observed - tol
            })
            .count();
        (hits, total, true)
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
        let total = 20_000;
        let hits = (0..total)
            .filter(|_| {
                let s: f64 = d
                    .iter()
                    .map(|v| if rng.random_bool(0.5) { -v } else { *v })
                    .sum();
                s.abs() >= observed - tol
            })
            .count();
        // The observed pattern itself counts once (a valid Monte-Carlo p-value).
        (hits + 1, total + 1, false)
    };
    Some(PairedTest {
        n,
        mean_difference: d.iter().sum::<f64>() / n as f64,
        p_value: hits as f64 / total as f64,
        exact,
    })
}

/// ROC curve of `scores` for `positive` cases: (false-positive rate, true-positive rate)
/// points from (0, 0) to (1, 1), one per distinct threshold; `None` without both kinds.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Option<Vec<(f64, f64)>> {
    let p = positive.iter().filter(|v| **v).count();
    let n = positive.len() - p;
    if p == 0 || n == 0 || scores.len() != positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|i, j| scores[*j].total_cmp(&scores[*i]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for (k, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((fp as f64 / n as f64, tp as f64 / p as f64));
        }
    }
    Some(points)
}
