//! Timing and the few statistics the records hold.

use crate::Result;
use std::time::Instant;

/// The median of `v` (the mean of the two middle values for an even count; NaN when empty, which the
/// records write as null).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `dnd / reference`, where the reference value is known and positive: a missing or zero reference
/// (no Python given, a failed measurement) makes the ratio null, never infinite.
pub(crate) fn ratio(dnd: f64, reference: Option<f64>) -> Option<f64> {
    reference.filter(|&r| r > 0.0).map(|r| dnd / r)
}

/// Median seconds of `steps` calls after one warm-up call, with each timed call's seconds: the median
/// shrugs off the one call that another job on the machine slowed down.
pub(crate) fn median_time(
    steps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    f()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(&times), times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_need_a_positive_reference() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, Some(0.0)), None);
        assert_eq!(ratio(3.0, None), None);
    }

    #[test]
    fn timers_skip_the_warm_up_call_and_count_the_timed_ones() {
        let mut calls = 0;
        let (med, times) = median_time(2, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(if calls == 1 {
                50
            } else {
                1
            }));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            (calls, times.len()),
            (3, 2),
            "one warm-up and two timed calls"
        );
        assert!(med < 0.05, "the slow warm-up call is not timed: {med}");
        assert_eq!(med, median(&times));
    }

    #[test]
    fn a_failing_call_stops_the_timer() {
        let e = median_time(3, || Err(crate::BenchError::NoGradient)).unwrap_err();
        assert!(matches!(e, crate::BenchError::NoGradient));
    }
}
