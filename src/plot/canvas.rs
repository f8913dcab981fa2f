//! The drawing surface of the file plots: an RGB buffer on the CPU behind plotters' bitmap
//! backend, encoded as PNG and written atomically; and the one line-chart routine every plot
//! uses (title, axis labels, legend, solid or dashed lines).
//!
//! Invariants: the buffer is exactly width × height × 3 bytes; text uses egui's built-in font
//! (registered once per process), never a system font, so output does not depend on the host.

use super::PlotError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

/// A drawing area on the in-memory bitmap.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What a drawing step returns (plotters' errors, boxed).
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The font family every text of the plots uses.
pub(crate) const FONT: &str = "sans-serif";

/// Register egui's built-in font as plotters' sans-serif family (once).
fn register_fonts() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
            .is_ok()
    });
    ok.then_some(()).ok_or(PlotError::Font)
}

/// Draw with `draw` on a white `size`-pixel canvas and write it to `path` as a PNG
/// (atomically).
pub fn write_png(
    path: &Path,
    size: [u32; 2],
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<(), PlotError> {
    register_fonts()?;
    let [w, h] = size;
    let mut pixels = vec![255u8; w as usize * h as usize * 3];
    let failed = |message: String| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    };
    draw_into(&mut pixels, size, draw).map_err(|e| failed(e.to_string()))?;
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| failed("the pixel buffer has the wrong size".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::atomic::write_atomic(path, &png).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn draw_into(
    pixels: &mut [u8],
    [w, h]: [u32; 2],
    draw: impl FnOnce(&Area) -> DrawResult,
) -> DrawResult {
    let backend: BitMapBackend = BitMapBackend::with_buffer_and_format(pixels, (w, h))?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    draw(&root)?;
    root.present()?;
    Ok(())
}

/// An RGB triple as a plotters colour.
pub(crate) fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// One line of a chart.
pub(crate) struct Series {
    /// Name in the legend.
    pub name: String,
    /// (x, y) points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// RGB colour.
    pub colour: [u8; 3],
    /// Stroke width in pixels.
    pub width: u32,
    /// Dashed rather than solid.
    pub dashed: bool,
    /// Each point also drawn as a dot (sparse series, e.g. one value per epoch).
    pub dots: bool,
}

impl Series {
    /// A solid line listed in the legend.
    pub fn line(
        name: impl Into<String>,
        points: Vec<(f64, f64)>,
        colour: [u8; 3],
        width: u32,
    ) -> Self {
        Self {
            name: name.into(),
            points,
            colour,
            width,
            dashed: false,
            dots: false,
        }
    }
}

/// Title, axis labels and ranges of a chart.
pub(crate) struct Axes<'a> {
    /// Title above the chart.
    pub title: &'a str,
    /// Label of the horizontal axis.
    pub x: &'a str,
    /// Label of the vertical axis.
    pub y: &'a str,
    /// Values the horizontal range must include (beside the data).
    pub include_x: &'a [f64],
    /// Values the vertical range must include (beside the data).
    pub include_y: &'a [f64],
    /// Tick labels of the horizontal axis as integers (steps, epochs).
    pub integer_x: bool,
}

/// The range covering `values` and `include`, padded by 4 % each side (0..1 if empty).
pub(crate) fn span(values: impl Iterator<Item = f64>, include: &[f64]) -> Range<f64> {
    let (lo, hi) = values
        .chain(include.iter().copied())
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = match (lo.is_finite(), hi - lo) {
        (false, _) => (0.0, 1.0),
        (true, d) if d <= 0.0 => (lo - 0.5, hi + 0.5),
        _ => (lo, hi),
    };
    let pad = (hi - lo) * 0.04;
    lo - pad..hi + pad
}

/// Points along the lines of `series` (each segment sampled at 9 points), to find where the
/// data is.
fn along(series: &[Series]) -> impl Iterator<Item = (f64, f64)> + '_ {
    series.iter().flat_map(|s| {
        let single = (s.points.len() == 1).then(|| s.points[0]);
        let segments = s.points.windows(2).flat_map(|w| {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            (0..=8).map(move |k| {
                let t = k as f64 / 8.0;
                (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
            })
        });
        single.into_iter().chain(segments)
    })
}

/// The corner of the `x` × `y` plot with the fewest of `points` in it (the outer 40 % each
/// way), for the legend: upper right, lower right, upper left, lower left in that order of
/// preference.
pub(crate) fn quietest_corner(
    points: impl Iterator<Item = (f64, f64)>,
    x: &Range<f64>,
    y: &Range<f64>,
) -> SeriesLabelPosition {
    let mut counts = [0usize; 4];
    for (px, py) in points {
        let u = (px - x.start) / (x.end - x.start);
        let v = (py - y.start) / (y.end - y.start);
        let (right, left, top, bottom) = (u > 0.6, u < 0.4, v > 0.6, v < 0.4);
        for (k, inside) in [right && top, right && bottom, left && top, left && bottom]
            .into_iter()
            .enumerate()
        {
            counts[k] += usize::from(inside);
        }
    }
    let best = (0..4).min_by_key(|k| counts[*k]).unwrap_or(0);
    match best {
        0 => SeriesLabelPosition::UpperRight,
        1 => SeriesLabelPosition::LowerRight,
        2 => SeriesLabelPosition::UpperLeft,
        _ => SeriesLabelPosition::LowerLeft,
    }
}

/// Draw `series` as a line chart with `axes` filling `area`.
pub(crate) fn line_chart(area: &Area, axes: &Axes, series: &[Series]) -> DrawResult {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x = span(points().map(|p| p.0), axes.include_x);
    let y = span(points().map(|p| p.1), axes.include_y);
    let corner = quietest_corner(along(series), &x, &y);
    let mut chart = ChartBuilder::on(area)
        .caption(axes.title, (FONT, 22))
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(62)
        .build_cartesian_2d(x, y)?;
    // Integer axes label whole ticks only (a short run's range has ticks between them).
    let integer = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axes.x)
        .y_desc(axes.y)
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 14))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242));
    if axes.integer_x {
        mesh.x_label_formatter(&integer);
    }
    mesh.draw()?;
    let mut listed: Vec<&str> = Vec::new();
    for s in series {
        let style = ShapeStyle {
            color: rgb(s.colour).to_rgba(),
            filled: false,
            stroke_width: s.width,
        };
        if s.dots {
            let dot = style.filled();
            chart.draw_series(s.points.iter().map(|p| Circle::new(*p, s.width + 2, dot)))?;
        }
        let points = s.points.iter().copied();
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 9, 6, style))?
        } else {
            chart.draw_series(LineSeries::new(points, style))?
        };
        // Each name once in the legend (an arm's next seeds are not listed again), and only
        // with something drawn.
        if !s.points.is_empty() && !listed.contains(&s.name.as_str()) {
            listed.push(&s.name);
            // Two strokes with a gap for a dashed line, touching for a solid one.
            let gap = if s.dashed { 6 } else { 0 };
            drawn.label(s.name.as_str()).legend(move |at| {
                EmptyElement::at(at)
                    + PathElement::new(vec![(0, 0), (9, 0)], style)
                    + PathElement::new(vec![(9 + gap, 0), (24, 0)], style)
            });
        }
    }
    legend(&mut chart, corner, !listed.is_empty())
}

/// The legend box of `chart` at `position`, if anything is listed.
pub(crate) fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
    any: bool,
) -> DrawResult
where
    X: Ranged,
    Y: Ranged,
{
    if !any {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(position)
        .margin(10)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.88))
        .border_style(RGBColor(170, 170, 170))
        .draw()?;
    Ok(())
}
