//! The loss curve as a PNG. Text is drawn with an embedded DejaVu font (plotters' `ab_glyph`), so no
//! system font library is needed.

use crate::error::{io_err, CollectError, Result};
use crate::trainer::StepRecord;
use plotters::chart::SeriesLabelStyle;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

/// The drawing area of a bitmap figure.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// What a figure's drawing code returns.
pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draw a `size` PNG into `path` under a temporary name, then rename it, so no half-written image is
/// ever left: the one helper behind every figure of the workspace. Registers the embedded font once,
/// fills the background white and runs `draw`. A drawing failure becomes `plot_err(reason)`, a
/// failed rename `io_err(error)`.
pub fn render_png<E>(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
    plot_err: impl FnOnce(String) -> E,
    io_err: impl FnOnce(std::io::Error) -> E,
) -> std::result::Result<(), E> {
    FONT.call_once(|| {
        // A font that failed to parse surfaces below as a drawing error naming the file.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // The image encoder picks the format from the extension, so the temporary name keeps `.png`.
    let tmp = path.with_file_name(format!(".tmp-{name}"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()))
            .map_err(plot_err)?;
    }
    std::fs::rename(&tmp, path).map_err(io_err)
}

/// The legend of every figure: a translucent white box with a black frame and `font_px` text, ready
/// for a position and `draw()`.
pub fn legend<'a, 'b, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &'b mut ChartContext<'a, DB, CT>,
    font_px: u32,
) -> SeriesLabelStyle<'a, 'b, DB, CT> {
    let mut style = chart.configure_series_labels();
    style
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", font_px));
    style
}

/// Plot loss per step to `path` (written under a temporary name, then renamed), shading the steps
/// from `first_checkpoint` on, where every step is saved.
pub fn loss_png(
    path: &Path,
    title: &str,
    records: &[StepRecord],
    first_checkpoint: Option<usize>,
) -> Result<()> {
    render_png(
        path,
        (800, 480),
        |root| draw(root, title, records, first_checkpoint),
        |reason| CollectError::Plot {
            path: path.into(),
            reason,
        },
        io_err(path),
    )
}

fn draw(
    root: &Area,
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
