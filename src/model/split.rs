//! Holding cases out for validation so that validation can judge: a split stratified by class
//! (each class gets its share of the validation cases, at least one when it has two or more
//! cases and the validation set has room) and, within a class, covering the labels (a case that
//! brings a label the validation set lacks is taken first). The order is a seeded shuffle
//! (rand's `SliceRandom`), so a seed gives the same split on every machine. And what a
//! validation set cannot measure, in words, for the CLI and the panel.
//!
//! Invariants: every case is in exactly one of the two sets, in its original order; the
//! training set is never empty when there are cases; the split depends only on the cases'
//! classes, labels, their order and the seed.

use super::data::Sample;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Split samples into training and validation: `fraction` of them (rounded, at most all but
/// one) held out, stratified by class and covering labels, fixed by `seed`.
pub fn split_by_case(samples: Vec<Sample>, fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    // Cases without a class (a segmentation-only run's) form a stratum of their own.
    let unknown = samples
        .iter()
        .filter_map(|s| s.class)
        .max()
        .map_or(0, |c| c + 1);
    let classes: Vec<usize> = samples.iter().map(|s| s.class.unwrap_or(unknown)).collect();
    let labels: Vec<Vec<u8>> = samples
        .iter()
        .map(|s| s.foreground_by_label.iter().map(|l| l.0).collect())
        .collect();
    let held = held_out(&classes, &labels, fraction, seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in samples.into_iter().enumerate() {
        if held[i] {
            val.push(s);
        } else {
            train.push(s);
        }
    }
    (train, val)
}

/// Which of the cases (given by their class index and the label values they hold) are held
/// out: `fraction` of them (rounded, at most all but one), stratified by class and covering
/// labels, fixed by `seed` — the validation split of a run, and an experiment's test split.
pub fn held_out(classes: &[usize], labels: &[Vec<u8>], fraction: f64, seed: u64) -> Vec<bool> {
    let n = classes.len();
    let n_held = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let quotas = class_quotas(classes, n_held);
    pick_validation(&order, classes, labels, &quotas)
}

/// Validation cases per class index: proportional to the class's cases (the largest deficit
/// first), never the last case of a class (one always trains), and at least one for each class
/// of two or more cases while another class can spare one; summing to `n_val` where the caps
/// allow.
pub fn class_quotas(classes: &[usize], n_val: usize) -> Vec<usize> {
    let k = classes.iter().copied().max().map_or(0, |m| m + 1);
    let counts: Vec<usize> = (0..k)
        .map(|c| classes.iter().filter(|x| **x == c).count())
        .collect();
    let n = classes.len().max(1) as f64;
    let exact: Vec<f64> = counts
        .iter()
        .map(|c| n_val as f64 * *c as f64 / n)
        .collect();
    let cap = |c: usize| counts[c].saturating_sub(1);
    let mut quotas: Vec<usize> = (0..k)
        .map(|c| (exact[c].floor() as usize).min(cap(c)))
        .collect();
    while quotas.iter().sum::<usize>() < n_val {
        let next = (0..k).filter(|c| quotas[*c] < cap(*c)).max_by(|a, b| {
            let deficit = |c: usize| exact[c] - quotas[c] as f64;
            deficit(*a).total_cmp(&deficit(*b)).then(b.cmp(a))
        });
        match next {
            Some(c) => quotas[c] += 1,
            None => break,
        }
    }
    for c in 0..k {
        if counts[c] >= 2 && quotas[c] == 0 {
            if let Some(big) = (0..k).filter(|b| quotas[*b] > 1).max_by_key(|b| quotas[*b]) {
                quotas[big] -= 1;
                quotas[c] += 1;
            }
        }
    }
    quotas
}

/// Which cases are held out: per class, in the shuffled `order`, first those that bring a label
/// the validation set lacks, then the rest, up to the class's quota.
fn pick_validation(
    order: &[usize],
    classes: &[usize],
    labels: &[Vec<u8>],
    quotas: &[usize],
) -> Vec<bool> {
    let mut held = vec![false; classes.len()];
    let mut covered: Vec<u8> = Vec::new();
    for (c, quota) in quotas.iter().enumerate() {
        for _ in 0..*quota {
            let candidates = order
                .iter()
                .copied()
                .filter(|i| classes[*i] == c && !held[*i]);
            let best = candidates.max_by_key(|i| {
                let new = labels[*i].iter().filter(|l| !covered.contains(l)).count();
                // Most new labels; among equals, the earliest in the shuffled order.
                (new, std::cmp::Reverse(order.iter().position(|o| o == i)))
            });
            let Some(i) = best else { break };
            held[i] = true;
            covered.extend(labels[i].iter().copied());
        }
    }
    held
}

/// What a validation set cannot measure, given the training set: a class or a label the
/// training cases have and no validation case holds.
pub fn validation_gaps(
    train: &[Sample],
    val: &[Sample],
    class_names: &[String],
    label_name: impl Fn(u8) -> String,
) -> Vec<String> {
    let mut gaps = Vec::new();
    let classes_in = |set: &[Sample], c: usize| set.iter().any(|s| s.class == Some(c));
    for (c, name) in class_names.iter().enumerate() {
        if classes_in(train, c) && !classes_in(val, c) {
            gaps.push(format!(
                "no validation case is {name}: its accuracy and the class AUC cannot be measured"
            ));
        }
    }
    let has_label = |set: &[Sample], v: u8| {
        set.iter()
            .any(|s| s.foreground_by_label.iter().any(|l| l.0 == v))
    };
    let mut values: Vec<u8> = train
        .iter()
        .flat_map(|s| s.foreground_by_label.iter().map(|l| l.0))
        .collect();
    values.sort_unstable();
    values.dedup();
    for v in values {
        if !has_label(val, v) {
            gaps.push(format!(
                "no validation case holds label {v} ({}): its Dice cannot be measured",
                label_name(v)
            ));
        }
    }
    gaps
}
