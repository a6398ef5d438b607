//! Where the generated adapters lie in weight space, relative to the uniform average of the training
//! checkpoints and to each training LoRA. Accuracy alone cannot tell a generator that falls back to
//! the average from one that moves towards a related training task but not far enough to change a
//! score; these two numbers can.

use serde::{Deserialize, Serialize};

/// The mean of a target's generated adapters, placed against the uniform average `u` and the
/// training LoRAs `L_i` (all flattened the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// `|g − u| / mean_i |L_i − u|`: 0 at the uniform average, 1 as far from it as a training LoRA
    /// is on average.
    pub from_average: f64,
    /// Per training task, `<g − u, L_i − u> / |L_i − u|²`: the projection of `g` on the line from
    /// the average (0) to that task's LoRA (1).
    pub toward: Vec<(String, f64)>,
}

impl Position {
    /// `generated`: the target's adapters; `average`: the uniform average; `loras`: each training
    /// task's LoRA. `None` without generated adapters or LoRAs, or when the vectors differ in length.
    pub fn measure(
        generated: &[Vec<f32>],
        average: &[f32],
        loras: &[(&str, &[f32])],
    ) -> Option<Position> {
        let d = average.len();
        if generated.is_empty()
            || loras.is_empty()
            || generated.iter().any(|g| g.len() != d)
            || loras.iter().any(|(_, l)| l.len() != d)
        {
            return None;
        }
        let k = generated.len() as f64;
        let g: Vec<f64> = (0..d)
            .map(|i| generated.iter().map(|v| v[i] as f64).sum::<f64>() / k - average[i] as f64)
            .collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut spread = 0.0;
        let toward = loras
            .iter()
            .map(|(task, l)| {
                let dir: Vec<f64> = l.iter().zip(average).map(|(a, b)| (a - b) as f64).collect();
                let len2: f64 = dir.iter().map(|x| x * x).sum();
                spread += len2.sqrt();
                let dot: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
                let t = if len2 > 0.0 { dot / len2 } else { 0.0 };
                (task.to_string(), t)
            })
            .collect();
        spread /= loras.len() as f64;
        Some(Position {
            from_average: if spread > 0.0 { norm(&g) / spread } else { 0.0 },
            toward,
        })
    }

    /// The training task `g` moves furthest towards, and how far.
    pub fn strongest(&self) -> Option<(&str, f64)> {
        self.toward
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(t, v)| (t.as_str(), *v))
    }

    /// How far `g` moves towards `task`'s LoRA (`None` if it is not a training task).
    pub fn toward(&self, task: &str) -> Option<f64> {
        self.toward.iter().find(|(t, _)| t == task).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_between_the_average_and_one_lora() {
        let u = vec![1.0f32, 1.0, 1.0];
        // L_a = u + (2, 0, 0), L_b = u + (0, 4, 0): mean distance 3.
        let loras: [(&str, &[f32]); 2] = [("a", &[3.0, 1.0, 1.0]), ("b", &[1.0, 5.0, 1.0])];
        // Two generated adapters whose mean is u + (1.5, 0, 0): three quarters of the way to L_a.
        let generated = vec![vec![2.0f32, 1.5, 1.0], vec![3.0f32, 0.5, 1.0]];
        let p = Position::measure(&generated, &u, &loras).unwrap();
        assert!((p.toward("a").unwrap() - 0.75).abs() < 1e-12, "{p:?}");
        assert!(p.toward("b").unwrap().abs() < 1e-12, "{p:?}");
        assert!((p.from_average - 0.5).abs() < 1e-12, "{p:?}");
        assert_eq!(p.strongest().map(|s| s.0), Some("a"));
        assert_eq!(p.toward("c"), None);
    }

    #[test]
    fn the_average_itself_sits_at_zero() {
        let u = vec![0.5f32, -0.5];
        let loras: [(&str, &[f32]); 1] = [("a", &[1.0, 0.0])];
        let p = Position::measure(std::slice::from_ref(&u), &u, &loras).unwrap();
        assert_eq!((p.from_average, p.toward("a")), (0.0, Some(0.0)));
    }

    #[test]
    fn mismatched_or_empty_inputs_give_none() {
        let u = vec![0.0f32; 2];
        let loras: [(&str, &[f32]); 1] = [("a", &[1.0, 0.0])];
        assert_eq!(Position::measure(&[], &u, &loras), None);
        assert_eq!(Position::measure(&[vec![0.0; 3]], &u, &loras), None);
        assert_eq!(Position::measure(std::slice::from_ref(&u), &u, &[]), None);
    }
}
