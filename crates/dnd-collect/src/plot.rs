//! A run's loss curve as a PNG.

use crate::error::Result;
use crate::trainer::StepRecord;
use dnd_plot::{legend, render_png, Area, DrawResult};
use plotters::prelude::*;
use std::path::Path;

/// Plot loss per step to `path` (written under a temporary name, then renamed), shading the steps
/// from `first_checkpoint` on, where every step is saved.
pub fn loss_png(
    path: &Path,
    title: &str,
    records: &[StepRecord],
    first_checkpoint: Option<usize>,
) -> Result<()> {
    Ok(render_png(path, (800, 480), |root| {
        draw(root, title, records, first_checkpoint)
    })?)
}

fn draw(
    root: &Area<'_>,
    title: &str,
    records: &[StepRecord],
    first_checkpoint: Option<usize>,
) -> DrawResult {
    let last = records.last().map_or(1, |r| r.step).max(2);
    let finite = || records.iter().map(|r| r.loss).filter(|l| l.is_finite());
    let hi = finite().fold(f64::MIN, f64::max).max(1e-3);
    let lo = finite().fold(f64::MAX, f64::min).min(hi);
    let pad = 0.05 * (hi - lo).max(1e-3);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{title}: answer-token loss per step"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..last as f64, (lo - pad).max(0.0)..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .label_style(("sans-serif", 14))
        .draw()?;
    if let Some(f) = first_checkpoint {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f as f64, (lo - pad).max(0.0)), (last as f64, hi + pad)],
                RGBColor(255, 230, 200).filled(),
            )))?
            .label("a checkpoint saved at every step")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 15, y + 5)],
                    RGBColor(255, 230, 200).filled(),
                )
            });
    }
    let raw = BLUE.mix(0.5).stroke_width(1);
    chart
        .draw_series(LineSeries::new(
            records.iter().map(|r| (r.step as f64, r.loss)),
            raw,
        ))?
        .label("loss")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], raw));
    // Batches are small, so the per-step loss is noisy: a trailing mean shows the trend.
    let window = (records.len() / 10).clamp(1, 10);
    let smooth = records.iter().enumerate().map(|(i, r)| {
        let part = &records[(i + 1).saturating_sub(window)..=i];
        (
            r.step as f64,
            part.iter().map(|p| p.loss).sum::<f64>() / part.len() as f64,
        )
    });
    chart
        .draw_series(LineSeries::new(smooth, RED.stroke_width(2)))?
        .label(format!("mean of the last {window} steps"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED.stroke_width(2)));
    legend(&mut chart, 14).draw()?;
    Ok(())
}
