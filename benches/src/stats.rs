//! Medians and percentiles over benchmark samples.

/// The median of `samples` (the mean of the two middle values for an even count), or
/// `None` when there are no samples or one is NaN. Sorts `samples` in place.
pub fn median(samples: &mut [f64]) -> Option<f64> {
    if samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(samples[n / 2]),
        _ => Some((samples[n / 2 - 1] + samples[n / 2]) / 2.0),
    }
}

/// The `p`-th percentile (0..=100) of already sorted `sorted` by the nearest-rank
/// method: the smallest sample with at least `p` percent of the samples at or below it.
/// `None` when `sorted` is empty.
pub fn percentile_sorted<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: ceil(p/100 * n), 1-based; rank 0 (p = 0) means the minimum.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The largest value, `None` when empty.
pub fn max(samples: &[f64]) -> Option<f64> {
    samples.iter().copied().reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [1.0, f64::NAN]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        // With few samples p99 is the maximum, not an interpolation past it.
        assert_eq!(percentile_sorted(&[5, 7, 9], 99.0), Some(9));
        assert_eq!(percentile_sorted::<u32>(&[], 50.0), None);
    }

    #[test]
    fn max_of_samples() {
        assert_eq!(max(&[1.0, 9.0, 3.0]), Some(9.0));
        assert_eq!(max(&[]), None);
    }
}
