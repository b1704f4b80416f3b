//! Pictures: training curves, comparison plots and image strips, as PNG.
//! Text uses the DejaVu Sans font shipped in `assets/` (no system fonts).

use std::path::Path;
use std::sync::Once;

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::error::{Result, TrainError};

static FONT: Once = Once::new();
const FONT_BYTES: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

fn ensure_font() {
    FONT.call_once(|| {
        // The bundled font is valid; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_BYTES);
    });
}

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, axis labels and lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Panel caption.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// The x values to label (the batch sizes of a sweep, say) instead of
    /// the axis's own round numbers.
    pub x_ticks: Option<Vec<f64>>,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn range(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// An axis label: integers without a decimal point, else 3 significant digits.
fn tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Pixels of the plotting area of a panel `height` high (the caption, the
/// margins and the x-label band taken off), and of a legend of `rows`.
const CHROME_PX: f64 = 100.0;
const LEGEND_ROW_PX: f64 = 20.0;

/// Raises the top of `y0..y1` so that a legend of `rows` (upper corner)
/// sits in a band above every point, covering no data.
fn legend_headroom((y0, y1): (f64, f64), rows: usize, height: u32) -> (f64, f64) {
    let plot = (f64::from(height) - CHROME_PX).max(50.0);
    let f = ((rows as f64 * LEGEND_ROW_PX + 12.0) / plot).min(0.6);
    (y0, y1 + (y1 - y0) * f / (1.0 - f))
}

/// Draws panels side by side into a PNG of `width x height` per panel.
/// Legends sit in a band above the data (the y axis is extended for it), so
/// they never cover a point or a line.
pub fn draw_panels(path: &Path, panels: &[Panel], width: u32, height: u32) -> Result<()> {
    ensure_font();
    let w = width * panels.len().max(1) as u32;
    let mut buf = vec![255u8; (w * height * 3) as usize];
    let err = |e: String| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let ((x0, x1), ys) = range(panel);
            let (y0, y1) = legend_headroom(ys, panel.series.len(), height);
            // Custom x tick labels are drawn in a band below the data.
            let y0 = if panel.x_ticks.is_some() {
                let f = 22.0 / (f64::from(height) - CHROME_PX).max(50.0);
                y0 - (y1 - y0) * f / (1.0 - f)
            } else {
                y0
            };
            let integer_x = panel
                .series
                .iter()
                .flat_map(|s| &s.points)
                .all(|p| p.0.fract() == 0.0);
            let mut builder = ChartBuilder::on(area);
            builder
                .caption(&panel.title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60);
            macro_rules! body {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc(&panel.x_label)
                        .y_desc(&panel.y_label)
                        .label_style(("sans-serif", 14))
                        // A log axis would label (and grid) every 10, 20, ..., 90.
                        .x_labels(match (&panel.x_ticks, panel.log_x) {
                            (Some(_), _) => 0,
                            (None, true) => 6,
                            (None, false) => 10,
                        })
                        .max_light_lines(if panel.log_x { 1 } else { 10 })
                        .x_label_formatter(&|v| {
                            // Custom ticks replace the axis's labels; an axis
                            // of whole numbers (epochs) shows no fractions.
                            if panel.x_ticks.is_some() || (integer_x && v.fract() != 0.0) {
                                String::new()
                            } else {
                                tick(*v)
                            }
                        })
                        .draw()
                        .map_err(|e| err(e.to_string()))?;
                    for (i, s) in panel.series.iter().enumerate() {
                        let c = COLOURS[i % COLOURS.len()];
                        let pts: Vec<(f64, f64)> = s
                            .points
                            .iter()
                            .copied()
                            .filter(|p| p.1.is_finite())
                            .collect();
                        chart
                            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                            .map_err(|e| err(e.to_string()))?
                            .label(s.label.clone())
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                            });
                        chart
                            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                            .map_err(|e| err(e.to_string()))?;
                    }
                    if let Some(ticks) = &panel.x_ticks {
                        let style = TextStyle::from(("sans-serif", 14).into_font()).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Bottom,
                            ),
                        );
                        for &t in ticks {
                            chart
                                .draw_series(LineSeries::new(
                                    vec![(t, y0), (t, y1)],
                                    BLACK.mix(0.15).stroke_width(1),
                                ))
                                .map_err(|e| err(e.to_string()))?;
                            chart
                                .draw_series(std::iter::once(Text::new(
                                    tick(t),
                                    (t, y0),
                                    style.clone(),
                                )))
                                .map_err(|e| err(e.to_string()))?;
                        }
                    }
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .label_font(("sans-serif", 14))
                        .draw()
                        .map_err(|e| err(e.to_string()))?;
                }};
            }
            if panel.log_x {
                body!(builder
                    .build_cartesian_2d((x0.max(1e-9)..x1).log_scale(), y0..y1)
                    .map_err(|e| err(e.to_string()))?);
            } else {
                body!(builder
                    .build_cartesian_2d(x0..x1, y0..y1)
                    .map_err(|e| err(e.to_string()))?);
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = RgbImage::from_raw(w, height, buf).ok_or_else(|| err("buffer size".into()))?;
    save_png(&img, path)
}

/// Saves an RGB image as PNG (atomically).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
    }
    crate::checkpoint::write_atomic(path, &bytes)
}

/// A grid of equally sized tiles (`rows[r][c]`), each scaled up by `scale`
/// (nearest), with a `gap`-pixel white border.
pub fn tile_grid(rows: &[Vec<RgbImage>], scale: u32, gap: u32) -> RgbImage {
    let th = rows
        .first()
        .and_then(|r| r.first())
        .map_or(1, |t| t.height())
        * scale;
    let tw = rows
        .first()
        .and_then(|r| r.first())
        .map_or(1, |t| t.width())
        * scale;
    let ncols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let nrows = rows.len() as u32;
    let mut out = RgbImage::from_pixel(
        ncols * (tw + gap) + gap,
        nrows * (th + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            let ox = gap + c as u32 * (tw + gap);
            let oy = gap + r as u32 * (th + gap);
            for y in 0..th {
                for x in 0..tw {
                    let p = *tile.get_pixel(
                        (x / scale).min(tile.width() - 1),
                        (y / scale).min(tile.height() - 1),
                    );
                    out.put_pixel(ox + x, oy + y, p);
                }
            }
        }
    }
    out
}

/// Height of the title band [`with_column_titles`] adds.
pub const TITLE_BAND: u32 = 24;

/// `grid` (a [`tile_grid`] of tiles `tile_w` wide with `gap`-pixel borders)
/// with a band above it naming each column.
pub fn with_column_titles(
    grid: &RgbImage,
    titles: &[&str],
    tile_w: u32,
    gap: u32,
) -> Result<RgbImage> {
    ensure_font();
    let (w, h) = (grid.width(), grid.height() + TITLE_BAND);
    let mut buf = vec![255u8; (w * TITLE_BAND * 3) as usize];
    let err = |e: String| TrainError::Plot {
        path: "column titles".into(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, TITLE_BAND)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let style = TextStyle::from(("sans-serif", 15).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        for (c, t) in titles.iter().enumerate() {
            let x = (gap + c as u32 * (tile_w + gap) + tile_w / 2) as i32;
            root.draw(&Text::new(
                t.to_string(),
                (x, (TITLE_BAND / 2) as i32 + 2),
                style.clone(),
            ))
            .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let band = RgbImage::from_raw(w, TITLE_BAND, buf).ok_or_else(|| err("buffer size".into()))?;
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &band, 0, 0);
    image::imageops::replace(&mut out, grid, 0, i64::from(TITLE_BAND));
    Ok(out)
}

/// A legend image: one colour swatch and label per entry, `height` pixels
/// tall (at least enough for the entries).
pub fn legend(entries: &[(String, [u8; 3])], height: u32) -> Result<RgbImage> {
    ensure_font();
    let w = 260u32;
    let h = height.max(24 * entries.len() as u32 + 16);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let err = |e: String| TrainError::Plot {
        path: "legend".into(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        for (i, (label, c)) in entries.iter().enumerate() {
            let y = 8 + 24 * i as i32;
            let colour = RGBColor(c[0], c[1], c[2]);
            root.draw(&Rectangle::new([(8, y), (28, y + 18)], colour.filled()))
                .map_err(|e| err(e.to_string()))?;
            root.draw(&Text::new(label.clone(), (36, y + 2), ("sans-serif", 16)))
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| err("buffer size".into()))
}
