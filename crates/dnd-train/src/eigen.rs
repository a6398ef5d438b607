//! The leading eigenpairs of a small symmetric positive semi-definite matrix (a Gram matrix of a few
//! hundred long vectors): the principal components of adapters without a `d x d` covariance. Used to
//! start the basis head at the training checkpoints' principal directions, and by the experiment's
//! weight-space plots.

/// The `k` largest eigenpairs `(lambda, unit eigenvector)` of `gram`, largest first, by power
/// iteration with deflation; stops early at eigenvalues below `1e-12` of the trace.
pub fn gram_eigen(gram: &[Vec<f64>], k: usize) -> Vec<(f64, Vec<f64>)> {
    let n = gram.len();
    let mut m = gram.to_vec();
    let total: f64 = (0..n).map(|i| m[i][i]).sum();
    let mut out = Vec::new();
    for c in 0..k.min(n) {
        let (lambda, v) = top_eigen(&m, c as u64);
        if lambda <= 1e-12 * total.max(1e-300) {
            break;
        }
        for i in 0..n {
            for j in 0..n {
                m[i][j] -= lambda * v[i] * v[j];
            }
        }
        out.push((lambda, v));
    }
    out
}

/// Largest eigenpair of a symmetric positive semi-definite matrix by power iteration from a seeded
/// start, with the eigenvector's sign fixed (largest-magnitude entry positive) for reproducibility.
fn top_eigen(m: &[Vec<f64>], seed: u64) -> (f64, Vec<f64>) {
    let n = m.len();
    let mut v: Vec<f64> = (0..n)
        .map(|i| 1.0 + ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 1000.0)
        .collect();
    let mut lambda = 0.0;
    for _ in 0..1000 {
        let w: Vec<f64> = m
            .iter()
            .map(|row| row.iter().zip(&v).map(|(a, b)| a * b).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return (0.0, v);
        }
        let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
        let delta: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        lambda = norm;
        if delta < 1e-12 {
            break;
        }
    }
    let big = v
        .iter()
        .copied()
        .fold(0f64, |acc, x| if x.abs() > acc.abs() { x } else { acc });
    if big < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    (lambda, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenpairs_of_a_known_matrix() {
        // diag(4, 1) rotated by 45 degrees: eigenvalues 4 and 1 along (1, 1) and (1, -1).
        let gram = vec![vec![2.5, 1.5], vec![1.5, 2.5]];
        let pairs = gram_eigen(&gram, 3);
        assert_eq!(pairs.len(), 2);
        assert!((pairs[0].0 - 4.0).abs() < 1e-9 && (pairs[1].0 - 1.0).abs() < 1e-9);
        let s = 0.5f64.sqrt();
        assert!((pairs[0].1[0] - s).abs() < 1e-6 && (pairs[0].1[1] - s).abs() < 1e-6);
        assert!(
            (pairs[1].1[0].abs() - s).abs() < 1e-6 && (pairs[1].1[0] + pairs[1].1[1]).abs() < 1e-6
        );
    }
}
