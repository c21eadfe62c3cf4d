//! The fault-throughput plot: faults per second against CPU count, one line
//! per system (Samara with per-VMA locks, Samara with the mmap lock only,
//! Linux), error bars from the slowest to the fastest boot.
//!
//! SVG through plotters' SVG backend with no font features: text is written
//! as SVG `<text>` elements (the viewer picks a sans-serif font) and laid
//! out with plotters' built-in size estimate, so no font files, fontconfig
//! or system fonts are read.

use std::path::Path;

use plotters::prelude::*;

/// One point: CPU count, median, slowest and fastest run (faults/s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub cpus: u32,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// Index into the palette: a system keeps its colour whether or not
    /// the others have data.
    pub colour: usize,
    pub points: Vec<Point>,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// Renders the plot as SVG text.
pub fn render(title: &str, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        draw(&root, title, series).map_err(|e| format!("plot: {e}"))?;
        root.present().map_err(|e| format!("plot: {e}"))?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error + 'static>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_cpus = all().map(|p| p.cpus).max().unwrap_or(4).max(2);
    let top = all().map(|p| p.max).fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..(max_cpus as f64 + 0.5), 0.0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("CPUs")
        .y_desc("faults per second")
        .x_labels(max_cpus as usize + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 1.0 {
                format!("{}", x.round() as u32)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| human(*y))
        .light_line_style(WHITE)
        .draw()?;
    for s in series {
        let colour = COLOURS[s.colour % COLOURS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.cpus as f64, p.median)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        chart.draw_series(
            s.points
                .iter()
                .map(|p| ErrorBar::new_vertical(p.cpus as f64, p.min, p.median, p.max, colour, 8)),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Three significant digits with a k/M/G suffix: 1234567 -> "1.23M".
pub fn human(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let digits = match v.abs() {
        v if v >= 100.0 || v == 0.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    format!("{v:.digits$}{suffix}")
}

/// Writes the plot to `path`.
pub fn write(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    let svg = render(title, series)?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_lines_labels_and_error_bars_without_fonts() {
        let p = |cpus, m| Point {
            cpus,
            median: m,
            min: m * 0.9,
            max: m * 1.1,
        };
        let series = vec![
            Series {
                label: "Samara, per-VMA locks".into(),
                colour: 0,
                points: vec![p(1, 1e5), p(2, 1.8e5), p(4, 3e5)],
            },
            Series {
                label: "Linux 6.12".into(),
                colour: 2,
                points: vec![p(1, 9e4), p(2, 1.5e5)],
            },
        ];
        let svg = render("faultstorm, TCG", &series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("Samara, per-VMA locks") && svg.contains("Linux 6.12"));
        assert!(svg.contains("faults per second") && svg.contains("faultstorm, TCG"));
        assert!(svg.contains("<polyline"), "line series drawn");
        assert!(svg.contains("<circle"), "points drawn");
        // An empty plot (everything pending) still renders.
        assert!(render("empty", &[]).unwrap().contains("empty"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(2000.0), "2.00k");
        assert_eq!(human(87_424.0), "87.4k");
        assert_eq!(human(12.5), "12.5");
        assert_eq!(human(0.0), "0");
    }
}
