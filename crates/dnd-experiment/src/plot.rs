//! The report's figures, drawn with plotters and an embedded DejaVu font (no system font library).

use crate::report::Report;
use crate::Result;
use dnd_plot::{legend, render_png, Area, DrawResult};
use dnd_train::TrainManifest;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draw into `path` (a temporary name, then renamed; see [`render_png`]).
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<()> {
    Ok(render_png(path, size, draw)?)
}

/// One bar of the accuracy figure: (value, error) in %, or none where a target lacks that baseline.
type Bar = Option<(f64, f64)>;

/// A baseline's name on the figure's legend.
fn short_name(baseline: &str) -> &str {
    match baseline {
        "base model" => "base",
        "mean of training LoRAs" => "mean LoRA",
        "best training LoRA" => "best LoRA",
        "uniform average of checkpoints" => "uniform avg",
        "nearest-prompt LoRA" => "nearest",
        "oracle LoRA" => "oracle",
        other => other,
    }
}

/// Grouped bars per target: every baseline and DnD (mean, with its std over adapters as error bar).
pub fn accuracy(path: &Path, r: &Report) -> Result<()> {
    // Every baseline any target has, in table order (the target with the most lists them all);
    // a target without one (the multi-task LoRA) has no bar there.
    let all = r
        .targets
        .iter()
        .map(|t| t.baselines())
        .max_by_key(Vec::len)
        .unwrap_or_default();
    let mut names: Vec<&str> = all.iter().map(|(n, _)| short_name(n)).collect();
    names.push("DnD");
    let rows: Vec<(String, Vec<Bar>)> = r
        .targets
        .iter()
        .map(|t| {
            let own = t.baselines();
            let mut v: Vec<Bar> = all
                .iter()
                .map(|(name, _)| {
                    let (_, s) = own.iter().find(|(n, _)| n == name)?;
                    Some((100.0 * s.value, 100.0 * s.stderr))
                })
                .collect();
            v.push(Some((100.0 * t.dnd_mean, 100.0 * t.dnd_std)));
            (t.target.clone(), v)
        })
        .collect();
    let width = (160 * rows.len().max(1) as u32 + 360).max(800);
    render(path, (width, 520), |root| {
        let n = rows.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption("accuracy on held-out targets (%)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            // One empty group's width on the right keeps the legend off the bars.
            .build_cartesian_2d(0f64..n + 1.0, 0f64..100f64)?;
        let labels: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(rows.len().max(1) * 2 + 3)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("%")
            .label_style(("sans-serif", 14))
            .draw()?;
        let k = names.len() as f64;
        let bw = 0.8 / k;
        for (j, name) in names.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let bars = rows.iter().enumerate().filter_map(move |(i, (_, v))| {
                let x0 = i as f64 + 0.1 + j as f64 * bw;
                let (value, _) = v[j]?;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + bw * 0.9, value)],
                    color.filled(),
                ))
            });
            chart.draw_series(bars)?.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
            let errs = rows.iter().enumerate().filter_map(move |(i, (_, v))| {
                let x = i as f64 + 0.1 + (j as f64 + 0.45) * bw;
                let (value, err) = v[j]?;
                Some(PathElement::new(
                    [(x, value - err), (x, value + err)],
                    BLACK,
                ))
            });
            chart.draw_series(errs)?;
        }
        legend(&mut chart, 13)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

/// Every target's generator: training loss (trailing mean) and held-out loss, log scale.
pub fn curves(path: &Path, manifests: &BTreeMap<String, TrainManifest>) -> Result<()> {
    render(path, (900, 520), |root| {
        let last = manifests
            .values()
            .filter_map(|m| m.steps.last().map(|s| s.step))
            .max()
            .unwrap_or(1)
            .max(2) as f64;
        let values: Vec<f64> = manifests
            .values()
            .flat_map(|m| {
                m.steps
                    .iter()
                    .map(|s| s.loss)
                    .chain(m.validations.iter().map(|v| v.loss))
            })
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        // log10 of the loss on a linear axis, labelled with the loss: plotters' log axis draws no
        // labels on a range narrower than a decade.
        let hi = values.iter().copied().fold(1e-6, f64::max).log10() + 0.1;
        let lo = values
            .iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .min(1e300)
            .log10()
            - 0.1;
        let lo = lo.min(hi - 0.2);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "generator training per held-out target (line: train, trailing mean; dots: held-out)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..last, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("weighted MSE (log scale)")
            .y_label_formatter(&|y| format!("{:.3}", 10f64.powf(*y)))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (target, m)) in manifests.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let window = (m.steps.len() / 20).clamp(1, 25);
            let smooth: Vec<(f64, f64)> = m
                .steps
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let part = &m.steps[(k + 1).saturating_sub(window)..=k];
                    let mean = part.iter().map(|p| p.loss).sum::<f64>() / part.len() as f64;
                    (s.step as f64, mean.max(1e-300).log10())
                })
                .collect();
            chart
                .draw_series(LineSeries::new(smooth, color.stroke_width(2)))?
                .label(format!("held out: {target}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart.draw_series(m.validations.iter().map(|v| {
                Circle::new(
                    (v.step as f64, v.loss.max(1e-300).log10()),
                    4,
                    color.filled(),
                )
            }))?;
        }
        legend(&mut chart, 13).draw()?;
        Ok(())
    })
}

/// Training checkpoints (dots, coloured by task) and generated adapters (crosses in their target's
/// colour) on the first two principal components.
pub fn pca(path: &Path, r: &Report) -> Result<()> {
    let mut tasks: Vec<&str> = Vec::new();
    for p in &r.pca {
        if !tasks.contains(&p.task.as_str()) {
            tasks.push(&p.task);
        }
    }
    render(path, (800, 640), |root| {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &r.pca {
            x0 = x0.min(p.x);
            x1 = x1.max(p.x);
            y0 = y0.min(p.y);
            y1 = y1.max(p.y);
        }
        if r.pca.is_empty() {
            (x0, x1, y0, y1) = (-1.0, 1.0, -1.0, 1.0);
        }
        // Room on the right for the legend, so it never hides points.
        x1 += 0.6 * (x1 - x0).max(1e-9);
        let px = 0.05 * (x1 - x0).max(1e-9);
        let py = 0.05 * (y1 - y0).max(1e-9);
        let ex = |i: usize| r.pca_explained.get(i).map_or(0.0, |e| 100.0 * e);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "LoRA weights: training checkpoints and generated adapters",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0 - px..x1 + px, y0 - py..y1 + py)?;
        chart
            .configure_mesh()
            .x_desc(format!("PC1 ({:.1}%)", ex(0)))
            .y_desc(format!("PC2 ({:.1}%)", ex(1)))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, task) in tasks.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts = |kind: &'static str| {
                r.pca
                    .iter()
                    .filter(move |p| p.task == *task && p.kind == kind)
                    .map(|p| (p.x, p.y))
            };
            chart
                .draw_series(pts("checkpoint").map(|c| Circle::new(c, 3, color.filled())))?
                .label(format!("{task} checkpoints"))
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
            if pts("generated").next().is_some() {
                chart
                    .draw_series(pts("generated").map(|c| Cross::new(c, 6, color.stroke_width(3))))?
                    .label(format!("generated for {task}"))
                    .legend(move |(x, y)| Cross::new((x + 6, y), 5, color.stroke_width(3)));
            }
        }
        legend(&mut chart, 12).draw()?;
        Ok(())
    })
}
