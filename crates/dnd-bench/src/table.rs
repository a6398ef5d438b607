//! Cells of the Markdown summary tables the benchmarks print.

/// A value with `decimals` decimals, or `-` where it is missing or not a number (the results file
/// holds null there).
pub(crate) fn value(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

/// A ratio as `1.23x`, or `-`.
pub(crate) fn times(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".into(), |x| format!("{x:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_and_show_missing_values_as_a_dash() {
        assert_eq!(value(Some(165.24), 1), "165.2");
        assert_eq!(value(Some(0.8870), 3), "0.887");
        assert_eq!(value(None, 1), "-");
        assert_eq!(value(Some(f64::NAN), 1), "-");
        assert_eq!(times(Some(1.16976)), "1.17x");
        assert_eq!(times(None), "-");
    }
}
