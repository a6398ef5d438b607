//! AdamW, the schedule and clipping against values printed by `torch.optim.AdamW` and
//! `torch.nn.utils.clip_grad_norm_` (torch 2.x, fp32), and exact resume through a saved state.

use candle_core::{DType, Device, Tensor, Var};
use dnd_optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Schedule};

fn t(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn close(got: &Tensor, want: &[f32], tol: f32) {
    let got: Vec<f32> = got.to_vec1().unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}

const GRADS: [[f32; 4]; 3] = [
    [0.1, -0.2, 0.3, 0.0],
    [0.05, 0.4, -0.3, 1.0],
    [-0.2, 0.1, 0.0, 0.5],
];
const LRS: [f64; 3] = [0.1, 0.05, 0.02];

fn optimizer() -> AdamW {
    let var = Var::from_tensor(&t(&[0.5, -1.0, 2.0, 0.0])).unwrap();
    AdamW::new(vec![var], AdamWConfig::default()).unwrap()
}

#[test]
fn adamw_matches_torch_for_three_steps() {
    // torch.optim.AdamW([p], lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), lr changed per step.
    let want = [
        [0.3995, -0.899, 1.898, 0.0],
        [0.352_691_26, -0.916_855_63, 1.899_682_5, -0.037_206_84],
        [0.356_747_87, -0.924_985_3, 1.900_116_3, -0.053_204_224],
    ];
    let mut opt = optimizer();
    for i in 0..3 {
        opt.step(&[t(&GRADS[i])], LRS[i]).unwrap();
        close(opt.vars()[0].as_tensor(), &want[i], 2e-7);
    }
    let state: std::collections::HashMap<_, _> = opt.state().unwrap().into_iter().collect();
    close(&state["m.0"], &[-0.0074, 0.0298, -0.0027, 0.14], 1e-8);
    close(
        &state["v.0"],
        &[5.247_751e-5, 2.097_600_5e-4, 1.797_301e-4, 1.249e-3],
        3e-10,
    );
    assert_eq!(opt.step_count(), 3);
}

#[test]
fn a_saved_state_resumes_bit_for_bit() {
    let mut straight = optimizer();
    for i in 0..3 {
        straight.step(&[t(&GRADS[i])], LRS[i]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let mut first = optimizer();
    first.step(&[t(&GRADS[0])], LRS[0]).unwrap();
    first.save(&path).unwrap();
    let params = first.vars()[0].as_tensor().clone();
    // A fresh process: new variables holding the saved parameters, moments from the file.
    let mut resumed = AdamW::new(
        vec![Var::from_tensor(&params).unwrap()],
        AdamWConfig::default(),
    )
    .unwrap();
    resumed.load(&path).unwrap();
    for i in 1..3 {
        resumed.step(&[t(&GRADS[i])], LRS[i]).unwrap();
    }
    let a: Vec<f32> = straight.vars()[0].as_tensor().to_vec1().unwrap();
    let b: Vec<f32> = resumed.vars()[0].as_tensor().to_vec1().unwrap();
    assert_eq!(
        a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn a_state_for_other_variables_is_refused() {
    let opt = optimizer();
    let state = opt.state().unwrap().into_iter().collect();
    let other = Var::from_tensor(&t(&[1.0, 2.0])).unwrap();
    let mut wrong = AdamW::new(vec![other], AdamWConfig::default()).unwrap();
    let err = wrong.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn clipping_matches_torch() {
    let mut g = vec![t(&[3.0, 4.0]), t(&[12.0])];
    let norm = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((norm - 13.0).abs() < 1e-12);
    close(&g[0], &[0.230_769_22, 0.307_692_3], 1e-7);
    close(&g[1], &[0.923_076_9], 1e-7);
    let mut small = vec![t(&[0.3, 0.4])];
    clip_grad_norm(&mut small, 1.0).unwrap();
    close(&small[0], &[0.3, 0.4], 0.0);
}

#[test]
fn schedule_warms_up_then_follows_a_cosine_to_the_floor() {
    let s = Schedule {
        peak: 1e-3,
        warmup: 4,
        total: 14,
        floor: 1e-4,
    };
    assert!((s.lr(1) - 2.5e-4).abs() < 1e-15);
    assert!((s.lr(4) - 1e-3).abs() < 1e-15);
    // Half-way through the cosine: the mid-point of peak and floor.
    assert!((s.lr(9) - 5.5e-4).abs() < 1e-12);
    assert!((s.lr(14) - 1e-4).abs() < 1e-15);
    assert!((s.lr(20) - 1e-4).abs() < 1e-15);
    assert!((4..14).all(|i| s.lr(i + 1) <= s.lr(i)));
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    // loss = mean over 4 items of (w * x_i)^2; two micro-batches of 1 and 3 items, each loss scaled by
    // its share of the batch, must sum to the full-batch gradient.
    let w = Var::from_tensor(&t(&[0.7])).unwrap();
    let x = [1.0f32, -2.0, 0.5, 3.0];
    let loss = |xs: &[f32]| {
        w.as_tensor()
            .broadcast_mul(&t(xs))
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let full = loss(&x).backward().unwrap();
    let full = full.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    let vars = [w.clone()];
    let mut acc = GradAccumulator::new(1);
    for (part, share) in [(&x[..1], 0.25), (&x[1..], 0.75)] {
        let grads = (loss(part) * share).unwrap().backward().unwrap();
        acc.add(&vars, &grads).unwrap();
    }
    let summed = acc.take(&vars).unwrap();
    close(&summed[0], &full, 1e-6);
    let empty = acc.take(&vars).unwrap();
    close(&empty[0], &[0.0], 0.0);
}

/// The update written with candle tensor ops, as `AdamW::step` computed it before the fused kernel.
fn tensor_ops_step(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    lr: f64,
    step: i32,
) -> (Tensor, Tensor, Tensor) {
    let c = AdamWConfig::default();
    let bc1 = 1.0 - c.beta1.powi(step);
    let bc2_sqrt = (1.0 - c.beta2.powi(step)).sqrt();
    let m = ((m * c.beta1).unwrap() + (g * (1.0 - c.beta1)).unwrap()).unwrap();
    let v = ((v * c.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - c.beta2)).unwrap()).unwrap();
    let denom = ((v.sqrt().unwrap() / bc2_sqrt).unwrap() + c.eps).unwrap();
    let decayed = (theta * (1.0 - lr * c.weight_decay)).unwrap();
    let update = ((&m / &denom).unwrap() * (lr / bc1)).unwrap();
    ((decayed - update).unwrap(), m, v)
}

#[test]
fn the_in_place_update_equals_the_tensor_formula_bit_for_bit() {
    for dtype in [DType::F32, DType::F64] {
        let theta0 = Tensor::randn(0f32, 1.0, (7, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let var = Var::from_tensor(&theta0).unwrap();
        let mut opt = AdamW::new(vec![var.clone()], AdamWConfig::default()).unwrap();
        let (mut theta, mut m, mut v) = (
            theta0.clone(),
            theta0.zeros_like().unwrap(),
            theta0.zeros_like().unwrap(),
        );
        for step in 1..=4 {
            // A transposed (strided) gradient, as backward can return.
            let g = Tensor::randn(0f32, 0.3, (5, 7), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .t()
                .unwrap();
            let lr = 0.01 * step as f64;
            opt.step(std::slice::from_ref(&g), lr).unwrap();
            (theta, m, v) = tensor_ops_step(&theta, &m, &v, &g, lr, step);
            let state: std::collections::HashMap<_, _> = opt.state().unwrap().into_iter().collect();
            for (got, want) in [
                (var.as_tensor(), &theta),
                (&state["m.0"], &m),
                (&state["v.0"], &v),
            ] {
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(
                    diff.to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap(),
                    0.0,
                    "{dtype:?} step {step}"
                );
            }
        }
    }
}
