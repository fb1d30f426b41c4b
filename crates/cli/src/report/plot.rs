//! Figures for `latent report`: line, point and grouped-bar panels on linear or log axes,
//! drawn with plotters into an SVG and a PNG of the same layout, with a footer that states
//! where the data came from. Text is set in DejaVu Sans, embedded in the binary (no system
//! fonts needed).

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Style {
    /// Solid line with a marker at every point.
    LinePoints,
    /// Dashed line, no markers (bounds and reference slopes).
    Dashed,
    /// Markers only.
    Points,
    /// One bar per point, beside the other bar series at the same category (x = index).
    Bars,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (x, y) in data units; points with a non-positive coordinate on a log axis are left out.
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    /// Index into the palette (series that belong together share a colour).
    pub color: usize,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style, color: usize) -> Series {
        Series { name: name.into(), points, style, color }
    }
}

/// One chart.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    /// Category names for bar panels (x = 0, 1, …).
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// Text drawn in the panel's upper left corner (e.g. why it is empty).
    pub note: Option<String>,
    /// Where the legend goes.
    pub legend: Legend,
}

/// Legend corner.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Legend {
    #[default]
    UpperLeft,
    UpperRight,
    LowerRight,
}

/// A figure: panels side by side, and footer lines (command, machine, date).
#[derive(Clone, Debug)]
pub struct Figure {
    pub panels: Vec<Panel>,
    pub footer: Vec<String>,
}

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

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";
const PANEL_W: u32 = 640;
const PANEL_H: u32 = 460;
const FOOTER_LINE: u32 = 17;

/// Registers the embedded font once (plotters' text backend has no font otherwise).
pub fn init_fonts() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font did not load"))
    }
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        let n = self.panels.len().max(1) as u32;
        (PANEL_W * n, PANEL_H + 12 + FOOTER_LINE * self.footer.len() as u32)
    }

    /// Writes `stem.svg` and `stem.png`.
    pub fn save(&self, stem: &Path) -> Result<()> {
        init_fonts()?;
        let size = self.size();
        let svg = stem.with_extension("svg");
        {
            let root = SVGBackend::new(&svg, size).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
        }
        let png = stem.with_extension("png");
        {
            let root = BitMapBackend::new(&png, size).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e}");
        root.fill(&WHITE).map_err(e)?;
        let (chart_area, footer) = root.split_vertically(PANEL_H);
        let areas = chart_area.split_evenly((1, self.panels.len().max(1)));
        for (p, area) in self.panels.iter().zip(&areas) {
            draw_panel(area, p)?;
        }
        for (i, line) in self.footer.iter().enumerate() {
            let y = 4 + (i as u32 * FOOTER_LINE) as i32;
            footer
                .draw(&Text::new(line.clone(), (12, y), (FONT, 13).into_font().color(&RGBColor(60, 60, 60))))
                .map_err(e)?;
        }
        Ok(())
    }
}

/// Axis range over the points of `p` (one coordinate), padded; log axes use positive values
/// and whole decades around them.
fn range(values: impl Iterator<Item = f64>, log: bool, include_zero: bool) -> (f64, f64) {
    let v: Vec<f64> = values.filter(|v| v.is_finite() && (!log || *v > 0.0)).collect();
    let (mut lo, mut hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        lo = 10f64.powf(lo.log10().floor());
        hi = 10f64.powf((hi.log10() + 1e-9).ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        (lo, hi)
    } else {
        if include_zero {
            lo = lo.min(0.0);
        }
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-9);
        (if include_zero && lo >= 0.0 { 0.0 } else { lo - pad }, hi + pad)
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<()> {
    let bars = p.series.iter().any(|s| s.style == Style::Bars);
    let (x0, x1) = if bars {
        (-0.5, p.categories.len().max(1) as f64 - 0.5)
    } else {
        range(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)), p.x_log, false)
    };
    let (y0, y1) = range(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)), p.y_log, !p.y_log);
    match (p.x_log, p.y_log) {
        (false, false) => panel_on::<DB, RangedCoordf64, RangedCoordf64>(area, p, (x0..x1).into(), (y0..y1).into()),
        (true, false) => {
            panel_on::<DB, LogCoord<f64>, RangedCoordf64>(area, p, (x0..x1).log_scale().into(), (y0..y1).into())
        }
        (false, true) => {
            panel_on::<DB, RangedCoordf64, LogCoord<f64>>(area, p, (x0..x1).into(), (y0..y1).log_scale().into())
        }
        (true, true) => panel_on::<DB, LogCoord<f64>, LogCoord<f64>>(
            area,
            p,
            (x0..x1).log_scale().into(),
            (y0..y1).log_scale().into(),
        ),
    }
}

/// Tick label: short, without float noise (1k, 32k, 0.5, 1e-3).
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if a >= 1e6 && (v / 1e6).fract().abs() < 1e-9 {
        return format!("{}M", v / 1e6);
    }
    if a >= 1e3 && (v / 1e3).fract().abs() < 1e-9 {
        return format!("{}k", v / 1e3);
    }
    if a >= 1e-2 {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return s.to_string();
    }
    format!("{v:.0e}")
}

fn panel_on<DB, X, Y>(area: &DrawingArea<DB, Shift>, p: &Panel, x: X, y: Y) -> Result<()>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e}");
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 17).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(if p.categories.is_empty() { 42 } else { 58 })
        .y_label_area_size(62)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    let cats = p.categories.clone();
    let x_fmt = move |v: &f64| -> String {
        if cats.is_empty() {
            tick(*v)
        } else {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cats.len() {
                cats[i as usize].clone()
            } else {
                String::new()
            }
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(RGBColor(235, 235, 235));
    if !p.categories.is_empty() {
        mesh.x_labels(p.categories.len() * 2 + 1).disable_x_mesh();
    }
    mesh.draw().map_err(e)?;
    let bar_series: Vec<usize> =
        p.series.iter().enumerate().filter(|(_, s)| s.style == Style::Bars).map(|(i, _)| i).collect();
    let x_log = p.x_log;
    let y_log = p.y_log;
    let keep =
        move |q: &(f64, f64)| q.0.is_finite() && q.1.is_finite() && (!x_log || q.0 > 0.0) && (!y_log || q.1 > 0.0);
    let y_floor = chart.y_range().start;
    for (si, s) in p.series.iter().enumerate() {
        let c = color(s.color);
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(keep).collect();
        let legend_style = c.stroke_width(2);
        let anno = match s.style {
            Style::LinePoints => {
                chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2))).map_err(e)?;
                chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled()))).map_err(e)?
            }
            Style::Dashed => {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, c.stroke_width(1))).map_err(e)?
            }
            Style::Points => chart.draw_series(pts.iter().map(|&q| Cross::new(q, 5, c.stroke_width(2)))).map_err(e)?,
            Style::Bars => {
                let nb = bar_series.len().max(1) as f64;
                let k = bar_series.iter().position(|&i| i == si).unwrap_or(0) as f64;
                let w = 0.8 / nb;
                chart
                    .draw_series(pts.iter().map(|&(xv, yv)| {
                        let left = xv - 0.4 + k * w;
                        Rectangle::new([(left, y_floor), (left + w * 0.92, yv)], c.filled())
                    }))
                    .map_err(e)?
            }
        };
        if !s.name.is_empty() {
            anno.label(s.name.clone())
                .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 18, ly)], legend_style));
        }
    }
    if p.series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .position(match p.legend {
                Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                Legend::UpperRight => SeriesLabelPosition::UpperRight,
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(e)?;
    }
    if let Some(note) = &p.note {
        for (i, line) in note.lines().enumerate() {
            area.draw(&Text::new(
                line.to_string(),
                (80, 60 + 18 * i as i32),
                (FONT, 14).into_font().color(&RGBColor(150, 30, 30)),
            ))
            .map_err(e)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(1024.0), "1024");
        assert_eq!(tick(4000.0), "4k");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(0.001), "1e-3");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn log_ranges_cover_whole_decades() {
        assert_eq!(range([3.0, 250.0].into_iter(), true, false), (1.0, 1000.0));
        assert_eq!(range([10.0].into_iter(), true, false), (10.0, 100.0));
        let (lo, hi) = range([2.0, 4.0].into_iter(), false, true);
        assert_eq!(lo, 0.0);
        assert!(hi > 4.0);
        // Nothing plottable: a default range, not NaN.
        assert_eq!(range([f64::NAN, -1.0].into_iter(), true, false), (1.0, 10.0));
    }
}
