//! The generator's loss curve: training loss per step, held-out loss at each validation, and the
//! held-out loss of the mean-checkpoint baselines as horizontal lines, so the plot alone shows whether
//! the generator beats "predict the mean". (`dnd_collect::loss_png` draws a single cross-entropy
//! series, hence this plot.)

use crate::trainer::TrainManifest;
use crate::Result;
use dnd_plot::{legend, render_png, Area, DrawResult};
use plotters::prelude::*;
use std::path::Path;

/// Draw `m`'s curves to `path` (under a temporary name, then renamed).
pub fn loss_png(path: &Path, m: &TrainManifest) -> Result<()> {
    Ok(render_png(path, (800, 480), |root| draw(root, m))?)
}

fn draw(root: &Area<'_>, m: &TrainManifest) -> DrawResult {
    let last = m.steps.last().map_or(1, |s| s.step).max(2) as f64;
    let values: Vec<f64> = m
        .steps
        .iter()
        .map(|s| s.loss)
        .chain(m.validations.iter().map(|v| v.loss))
        .chain(m.baseline_mean_checkpoint)
        .chain(m.baseline_task_mean)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let hi = values.iter().copied().fold(1e-6, f64::max) * 1.5;
    let lo = values.iter().copied().fold(hi, f64::min) / 1.5;
    let mut chart = ChartBuilder::on(root)
        .caption("generator: weighted token MSE", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..last, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("weighted MSE (log)")
        .label_style(("sans-serif", 14))
        .draw()?;
    let series = [
        (
            m.steps
                .iter()
                .map(|s| (s.step as f64, s.loss))
                .collect::<Vec<_>>(),
            BLUE,
            "train (batch)",
        ),
        (
            m.validations
                .iter()
                .map(|v| (v.step as f64, v.loss))
                .collect(),
            RED,
            "held-out checkpoints",
        ),
    ];
    for (points, color, label) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
    }
    let lines = [
        (
            m.baseline_mean_checkpoint,
            BLACK,
            "held-out: mean checkpoint",
        ),
        (
            m.baseline_task_mean,
            RGBColor(0, 140, 0),
            "held-out: own task's mean",
        ),
    ];
    for (value, color, label) in lines {
        if let Some(v) = value {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, v), (last, v)],
                    color.stroke_width(1),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 15, y)], color.stroke_width(1))
                });
        }
    }
    legend(&mut chart, 14).draw()?;
    Ok(())
}
