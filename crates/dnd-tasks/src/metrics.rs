//! Metrics as lm-evaluation-harness computes them, plus seeded bootstrap standard errors.

use std::sync::LazyLock;

use regex::Regex;

use crate::example::{Body, Example};

/// Bootstrap resamples per estimate (lm-eval's default is 100000; 1000 keeps CPU runs quick and
/// the estimate within a few percent).
pub const BOOTSTRAP_ITERS: usize = 1000;

/// Per-item log-likelihood scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemScore {
    pub acc: f64,
    /// lm-eval `acc_norm`: argmax of log-likelihood / choice length in characters. `None` for
    /// schema items, where lm-eval's WinoGrande reports acc only.
    pub acc_norm: Option<f64>,
}

/// Index of the first maximum, like `numpy.argmax` (NaN never wins).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Score an item from one log-likelihood per request of [`Example::requests`] (in order).
/// `None` if the item is not log-likelihood scored or the count does not match.
pub fn score_loglikelihoods(example: &Example, lls: &[f64]) -> Option<ItemScore> {
    let hit = |pred: usize, gold: usize| if pred == gold { 1.0 } else { 0.0 };
    match &example.body {
        Body::MultipleChoice { choices, gold, .. } if choices.len() == lls.len() => {
            // Python len(): code points of the choice, without the target delimiter.
            let norm: Vec<f64> = lls
                .iter()
                .zip(choices)
                .map(|(ll, c)| ll / c.chars().count() as f64)
                .collect();
            Some(ItemScore {
                acc: hit(argmax(lls), *gold),
                acc_norm: Some(hit(argmax(&norm), *gold)),
            })
        }
        Body::Schema { contexts, gold, .. } if contexts.len() == lls.len() => Some(ItemScore {
            acc: hit(argmax(lls), *gold),
            acc_norm: None,
        }),
        _ => None,
    }
}

/// A mean with its uncertainty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub n: usize,
    /// Sample standard deviation of the mean over seeded bootstrap resamples.
    pub stderr_bootstrap: f64,
    /// `sqrt(p (1 - p) / n)`, the binomial closed form, to cross-check the bootstrap.
    pub stderr_analytic: f64,
}

/// Mean of per-item scores (0/1 accuracies) with both standard errors; NaN fields when empty.
pub fn estimate(values: &[f64], iters: usize, seed: u64) -> Estimate {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    Estimate {
        mean,
        n,
        stderr_bootstrap: bootstrap_stderr(values, iters, seed),
        stderr_analytic: (mean * (1.0 - mean) / n as f64).sqrt(),
    }
}

/// Standard deviation (n - 1) of the means of `iters` resamples drawn with replacement.
pub fn bootstrap_stderr(values: &[f64], iters: usize, seed: u64) -> f64 {
    if values.is_empty() || iters < 2 {
        return f64::NAN;
    }
    let mut rng = SplitMix64(seed);
    let n = values.len();
    let means: Vec<f64> = (0..iters)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    let mu = means.iter().sum::<f64>() / iters as f64;
    (means.iter().map(|m| (m - mu).powi(2)).sum::<f64>() / (iters - 1) as f64).sqrt()
}

/// SplitMix64 (Steele et al. 2014): tiny, fixed forever, so a seed always gives the same stderr.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` by multiply-shift.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// lm-eval GSM8K "strict-match": the number after the first `#### `.
pub fn extract_strict(text: &str) -> Option<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"#### (\-?[0-9\.\,]+)").expect("valid regex"));
    RE.captures(text).map(|c| c[1].trim().to_string())
}

/// lm-eval GSM8K "flexible-extract": the last number-like run in the text.
pub fn extract_flexible(text: &str) -> Option<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid regex"));
    let last = RE.captures_iter(text).last()?;
    let m = last.get(1).or_else(|| last.get(2))?;
    Some(m.as_str().trim().to_string())
}

/// lm-eval GSM8K `exact_match`: both sides lower-cased with `,`, `$`, everything up to the last
/// `#### ` and a final `.` removed. (Python's `$` also matches before a final newline; so does
/// the pattern here.)
pub fn gsm8k_exact_match(prediction: &str, reference: &str) -> bool {
    static IGNORE: LazyLock<[Regex; 4]> = LazyLock::new(|| {
        [r",", r"\$", r"(?s).*#### ", r"\.(\n?)\z"].map(|p| Regex::new(p).expect("valid regex"))
    });
    let clean = |s: &str| {
        let mut s = s.to_string();
        for (i, re) in IGNORE.iter().enumerate() {
            let with = if i == 3 { "$1" } else { "" };
            s = re.replace_all(&s, with).into_owned();
        }
        s.to_lowercase()
    };
    clean(prediction) == clean(reference)
}

/// Per-item GSM8K scores under both extractions; `None` for a non-generative item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationScore {
    pub strict: f64,
    pub flexible: f64,
}

pub fn score_generation(example: &Example, generation: &str) -> Option<GenerationScore> {
    let Body::Generative { answer, .. } = &example.body else {
        return None;
    };
    let score = |pred: Option<String>| match pred {
        Some(p) if gsm8k_exact_match(&p, answer) => 1.0,
        _ => 0.0,
    };
    Some(GenerationScore {
        strict: score(extract_strict(generation)),
        flexible: score(extract_flexible(generation)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(choices: &[&str], gold: usize) -> Example {
        Example {
            id: "x".into(),
            prompt: String::new(),
            key: String::new(),
            body: Body::MultipleChoice {
                context: "c".into(),
                choices: choices.iter().map(|s| s.to_string()).collect(),
                gold,
            },
        }
    }

    #[test]
    fn acc_norm_divides_by_characters() {
        // lls -4 over 2 chars = -2; -6 over 6 chars = -1: acc picks 0, acc_norm picks 1.
        let ex = mc(&["ab", "abcdéf"], 1);
        let s = score_loglikelihoods(&ex, &[-4.0, -6.0]).unwrap();
        assert_eq!((s.acc, s.acc_norm), (0.0, Some(1.0)));
        assert_eq!(score_loglikelihoods(&ex, &[-1.0]), None);
        assert_eq!(
            argmax(&[1.0, 3.0, 3.0]),
            1,
            "ties go to the first, like numpy"
        );
        assert_eq!(argmax(&[f64::NAN, -1.0]), 1);
    }

    #[test]
    fn standard_errors() {
        let values: Vec<f64> = (0..400).map(|i| f64::from(i % 4 == 0)).collect();
        let e = estimate(&values, BOOTSTRAP_ITERS, 1);
        assert_eq!(e.mean, 0.25);
        let analytic = (0.25f64 * 0.75 / 400.0).sqrt();
        assert!((e.stderr_analytic - analytic).abs() < 1e-12);
        assert!((e.stderr_bootstrap / analytic - 1.0).abs() < 0.1, "{e:?}");
        assert_eq!(e, estimate(&values, BOOTSTRAP_ITERS, 1), "seeded");
        assert_eq!(bootstrap_stderr(&[1.0; 50], 100, 3), 0.0);
        assert!(estimate(&[], 10, 0).mean.is_nan());
    }

    #[test]
    fn gsm8k_extraction_and_match() {
        let out = "She has 3 + 4 = 7 apples, $1,000 total.\n#### 1,000\nThen 5";
        assert_eq!(extract_strict(out).as_deref(), Some("1,000"));
        assert_eq!(extract_flexible(out).as_deref(), Some("5"));
        assert_eq!(
            extract_flexible("The answer is $18.").as_deref(),
            Some("$18.")
        );
        assert_eq!(extract_strict("The answer is 18"), None);
        assert!(gsm8k_exact_match("$18.", "18"));
        assert!(gsm8k_exact_match("1,000", "Work...\n#### 1000"));
        assert!(!gsm8k_exact_match("18.5", "18"));
        let ex = crate::templates::gsm8k("q", "So 2+2=4.\n#### 4").unwrap();
        let s = score_generation(&ex, "2 plus 2 is 4.\n#### 4").unwrap();
        assert_eq!((s.strict, s.flexible), (1.0, 1.0));
        let s = score_generation(&ex, "It is 4, not 5").unwrap();
        assert_eq!((s.strict, s.flexible), (0.0, 0.0));
    }
}
