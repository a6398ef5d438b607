//! Principal components of many long vectors (flattened LoRA adapters, millions of values each) from
//! their n x n Gram matrix: with n in the hundreds, the eigenvectors of the centred Gram matrix (power
//! iteration with deflation) give the components without ever forming a d x d covariance.

use crate::Result;
use candle_core::DType;
use dnd_llm::Lora;
use dnd_train::gram_eigen;

/// At most this many coordinates of a flattened adapter enter the PCA (an evenly strided subset), so
/// that a few hundred adapters fit in memory; the projection is of that subset, as the report says.
pub const MAX_COORDS: usize = 1 << 18;

/// A fitted projection onto the top principal components.
#[derive(Debug, Clone)]
pub struct Pca {
    mean: Vec<f64>,
    /// Unit-norm components, largest variance first.
    components: Vec<Vec<f64>>,
    /// Share of the total variance each component explains.
    pub explained: Vec<f64>,
}

impl Pca {
    /// Fit the top `k` components of `rows` (all of one length, at least two rows).
    pub fn fit(rows: &[Vec<f32>], k: usize) -> Pca {
        let n = rows.len();
        let d = rows.first().map_or(0, Vec::len);
        let mut mean = vec![0f64; d];
        for r in rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += *x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let centred: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| r.iter().zip(&mean).map(|(x, m)| *x as f64 - m).collect())
            .collect();
        let mut gram = vec![vec![0f64; n]; n];
        for i in 0..n {
            for j in i..n {
                let v: f64 = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
                gram[i][j] = v;
                gram[j][i] = v;
            }
        }
        let total: f64 = (0..n).map(|i| gram[i][i]).sum();
        let mut components = Vec::new();
        let mut explained = Vec::new();
        for (lambda, v) in gram_eigen(&gram, k) {
            // u = Xcᵀ v / sqrt(λ) has unit norm because ‖Xcᵀ v‖² = vᵀ K v = λ.
            let mut u = vec![0f64; d];
            for (row, w) in centred.iter().zip(&v) {
                for (ui, x) in u.iter_mut().zip(row) {
                    *ui += w * x;
                }
            }
            let s = lambda.sqrt();
            u.iter_mut().for_each(|x| *x /= s);
            components.push(u);
            explained.push(lambda / total);
        }
        Pca {
            mean,
            components,
            explained,
        }
    }

    /// Coordinates of `row` on the components.
    pub fn project(&self, row: &[f32]) -> Vec<f64> {
        self.components
            .iter()
            .map(|u| {
                row.iter()
                    .zip(&self.mean)
                    .zip(u)
                    .map(|((x, m), w)| (*x as f64 - m) * w)
                    .sum()
            })
            .collect()
    }
}

/// An adapter as one vector: every module's A then B, in canonical module order, keeping every
/// `stride`-th value.
pub fn flatten(lora: &Lora, stride: usize) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for (_, _, a, b) in lora.modules() {
        for t in [a, b] {
            out.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
    }
    Ok(out.into_iter().step_by(stride.max(1)).collect())
}

/// The stride that keeps at most [`MAX_COORDS`] of an adapter's values.
pub fn stride_for(lora: &Lora) -> usize {
    let total: usize = lora
        .modules()
        .map(|(_, _, a, b)| a.elem_count() + b.elem_count())
        .sum();
    total.div_ceil(MAX_COORDS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_of_a_known_cloud() {
        // Points (±3, 0, 0) and (0, ±1, 0): the x axis carries variance 4.5, the y axis 0.5.
        let rows = vec![
            vec![3.0, 0.0, 0.0],
            vec![-3.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, -1.0, 0.0],
        ];
        let pca = Pca::fit(&rows, 2);
        assert!((pca.explained[0] - 0.9).abs() < 1e-9, "{:?}", pca.explained);
        assert!((pca.explained[1] - 0.1).abs() < 1e-9);
        let p = pca.project(&[3.0, 0.0, 5.0]);
        assert!(
            (p[0].abs() - 3.0).abs() < 1e-9 && p[1].abs() < 1e-9,
            "{p:?}"
        );
        let q = pca.project(&[0.0, -1.0, 0.0]);
        assert!(
            q[0].abs() < 1e-9 && (q[1].abs() - 1.0).abs() < 1e-9,
            "{q:?}"
        );
    }

    #[test]
    fn a_rotated_line_is_found() {
        // Points along (1, 2, 2)/3 with small orthogonal wiggle: PC1 is that direction.
        let dir = [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0];
        let rows: Vec<Vec<f32>> = (0..9)
            .map(|i| {
                let t = i as f64 - 4.0;
                let w = if i % 2 == 0 { 0.01 } else { -0.01 };
                // (2, -1, 0) is orthogonal to the line.
                vec![
                    (t * dir[0] + 2.0 * w) as f32,
                    (t * dir[1] - w) as f32 + 1.0,
                    (t * dir[2]) as f32,
                ]
            })
            .collect();
        let pca = Pca::fit(&rows, 1);
        let u = &pca.components[0];
        let dot: f64 = u.iter().zip(dir).map(|(a, b)| a * b).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-4, "{u:?}");
        assert!(pca.explained[0] > 0.99);
    }
}
