//! The figure helpers every stage of dnd shares (loss curves, accuracy bars, PCA scatters): a PNG is
//! drawn with an embedded DejaVu font (plotters' `ab_glyph`, so no system font library is needed) and
//! written atomically, and every legend looks alike.

#![deny(missing_docs)]

use dnd_io::PathIoError;
use plotters::chart::SeriesLabelStyle;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: Once = Once::new();

/// The drawing area of a bitmap figure.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// What a figure's drawing code returns.
pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A figure that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing or encoding failed.
    #[error("{path}: cannot draw: {reason}")]
    Draw {
        /// The figure's file.
        path: PathBuf,
        /// What plotters said.
        reason: String,
    },
    /// Renaming the finished figure into place failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// Draw a `size` PNG into `path` under a temporary name, then rename it, so no half-written image is
/// ever left. Registers the embedded font once, fills the background white and runs `draw`.
pub fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), PlotError> {
    FONT.call_once(|| {
        // A font that failed to parse surfaces below as a drawing error naming the file.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    dnd_io::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()))
            .map_err(|reason| PlotError::Draw {
                path: path.into(),
                reason,
            })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_and_names_the_file_when_drawing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.png");
        render_png(&path, (64, 48), |root| {
            root.draw(&Circle::new((10, 10), 5, RED.filled()))?;
            Ok(())
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let e = render_png(&path, (64, 48), |_| Err("no data".into())).unwrap_err();
        assert!(matches!(e, PlotError::Draw { ref path, .. } if path.ends_with("f.png")));
        assert!(e.to_string().contains("no data"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }
}
