//! A tiny dependency-free SVG line-chart writer for the reports of `cairn sim` and
//! `cairn bench`: several series, axes with ticks and labels, a legend, and a
//! logarithmic option on either axis.
//!
//! Owns: turning numbers into a standalone SVG document. May use: std only. A point
//! that a log axis cannot show (zero, negative, not finite) is left out and breaks the
//! line there, rather than being drawn at a made-up place.

use std::fmt::Write as _;

/// One line of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// (x, y) points, drawn in the given order.
    pub points: Vec<(f64, f64)>,
}

/// How one axis maps values to positions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Axis {
    /// The axis title.
    pub label: String,
    /// Logarithmic (base 10) rather than linear.
    pub log: bool,
    /// Fixed bounds; `None`: from the data (with zero included on a linear axis when
    /// the data are all positive and close to it).
    pub range: Option<(f64, f64)>,
    /// Ticks at these values with these labels, instead of computed ones.
    pub ticks: Option<Vec<(f64, String)>>,
}

/// A line chart: build it, then [`LineChart::to_svg`].
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The lines.
    pub series: Vec<Series>,
    /// Picture size in pixels.
    pub width: f64,
    /// Picture height in pixels.
    pub height: f64,
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const DASHES: [&str; 3] = ["", "6 3", "2 3"];
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 190.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 60.0;

impl LineChart {
    /// An empty chart of the default size (800 × 450).
    pub fn new(title: impl Into<String>, x: Axis, y: Axis) -> LineChart {
        LineChart {
            title: title.into(),
            x,
            y,
            series: Vec::new(),
            width: 800.0,
            height: 450.0,
        }
    }

    /// Adds a series.
    pub fn push(&mut self, name: impl Into<String>, points: Vec<(f64, f64)>) {
        self.series.push(Series {
            name: name.into(),
            points,
        });
    }

    /// The standalone SVG document.
    pub fn to_svg(&self) -> String {
        let plot_w = (self.width - MARGIN_LEFT - MARGIN_RIGHT).max(10.0);
        let plot_h = (self.height - MARGIN_TOP - MARGIN_BOTTOM).max(10.0);
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        let ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .collect();
        let x_scale = Scale::fit(&self.x, &xs, MARGIN_LEFT, MARGIN_LEFT + plot_w);
        // SVG's y grows downwards: the axis minimum sits at the bottom.
        let y_scale = Scale::fit(&self.y, &ys, MARGIN_TOP + plot_h, MARGIN_TOP);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
            w = self.width,
            h = self.height
        );
        let _ = writeln!(
            svg,
            r#"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"#,
            self.width, self.height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            self.width / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        let bottom = MARGIN_TOP + plot_h;
        for (value, label) in x_scale.ticks(&self.x) {
            let px = x_scale.position(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{MARGIN_TOP}" x2="{px:.1}" y2="{bottom}" stroke="#e0e0e0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                escape(&label)
            );
        }
        for (value, label) in y_scale.ticks(&self.y) {
            let py = y_scale.position(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{MARGIN_LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                MARGIN_LEFT + plot_w,
                MARGIN_LEFT - 6.0,
                py + 4.0,
                escape(&label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            MARGIN_LEFT + plot_w / 2.0,
            self.height - 16.0,
            escape(&self.x.label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            MARGIN_TOP + plot_h / 2.0,
            MARGIN_TOP + plot_h / 2.0,
            escape(&self.y.label)
        );
        // Lines, each broken where a point cannot be shown.
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let dash = DASHES[(i / COLOURS.len()) % DASHES.len()];
            for run in visible_runs(&series.points, &x_scale, &y_scale) {
                let points: Vec<String> =
                    run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                    points.join(" ")
                );
                for (x, y) in &run {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                    );
                }
            }
            let ly = MARGIN_TOP + 10.0 + 20.0 * i as f64;
            let lx = MARGIN_LEFT + plot_w + 15.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 25.0,
                lx + 32.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Maps values of one axis to pixels.
#[derive(Debug, Clone, Copy)]
struct Scale {
    log: bool,
    /// Bounds in axis units (log10 of the value on a log axis).
    low: f64,
    high: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn fit(axis: &Axis, values: &[f64], from: f64, to: f64) -> Scale {
        let shown: Vec<f64> = values
            .iter()
            .copied()
            .filter(|v| v.is_finite() && (!axis.log || *v > 0.0))
            .collect();
        let (mut low, mut high) = match axis.range {
            Some(range) => range,
            None => shown
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                }),
        };
        if !low.is_finite() || !high.is_finite() {
            (low, high) = if axis.log { (1.0, 10.0) } else { (0.0, 1.0) };
        }
        if axis.log {
            let (l, h) = (
                low.max(f64::MIN_POSITIVE).log10(),
                high.max(f64::MIN_POSITIVE).log10(),
            );
            // Whole decades, so that the end ticks sit on the frame; with ticks given,
            // the data's own bounds and a little room.
            let (mut l, mut h) = if axis.ticks.is_some() && axis.range.is_none() {
                (l - 0.1, h + 0.1)
            } else {
                (l.floor(), h.ceil())
            };
            if h <= l {
                (l, h) = (l - 1.0, h + 1.0);
            }
            return Scale {
                log: true,
                low: l,
                high: h,
                from,
                to,
            };
        }
        if axis.range.is_none() && low > 0.0 && low < 0.5 * high {
            low = 0.0;
        }
        if high <= low {
            let pad = if low == 0.0 { 1.0 } else { low.abs() * 0.1 };
            (low, high) = (low - pad, high + pad);
        }
        if axis.range.is_none() {
            let step = nice_step((high - low) / 5.0);
            (low, high) = ((low / step).floor() * step, (high / step).ceil() * step);
        }
        Scale {
            log: false,
            low,
            high,
            from,
            to,
        }
    }

    /// The value in axis units, or `None` if this axis cannot show it.
    fn unit(&self, value: f64) -> Option<f64> {
        if !value.is_finite() {
            return None;
        }
        if self.log {
            (value > 0.0).then(|| value.log10())
        } else {
            Some(value)
        }
    }

    fn position(&self, value: f64) -> f64 {
        let u = self.unit(value).unwrap_or(self.low);
        self.from + (u - self.low) / (self.high - self.low) * (self.to - self.from)
    }

    fn ticks(&self, axis: &Axis) -> Vec<(f64, String)> {
        if let Some(ticks) = &axis.ticks {
            return ticks
                .iter()
                .filter(|(v, _)| {
                    self.unit(*v)
                        .is_some_and(|u| u >= self.low - 1e-9 && u <= self.high + 1e-9)
                })
                .cloned()
                .collect();
        }
        if self.log {
            let decades = (self.high - self.low).round() as i32;
            let every = (decades / 8).max(1);
            return (0..=decades)
                .step_by(every as usize)
                .map(|d| {
                    let exponent = self.low as i32 + d;
                    (10f64.powi(exponent), decade_label(exponent))
                })
                .collect();
        }
        let step = nice_step((self.high - self.low) / 5.0);
        let first = (self.low / step).ceil() as i64;
        let last = (self.high / step).floor() as i64;
        (first..=last)
            .take(50)
            .map(|i| {
                let v = i as f64 * step;
                (v, number_label(v, step))
            })
            .collect()
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn number_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let text = format!("{value:.decimals$}");
    if text.starts_with('-') && text.trim_start_matches(['-', '0', '.']).is_empty() {
        text[1..].to_owned()
    } else {
        text
    }
}

fn decade_label(exponent: i32) -> String {
    match exponent {
        -2 => "0.01".to_owned(),
        -1 => "0.1".to_owned(),
        0 => "1".to_owned(),
        1 => "10".to_owned(),
        2 => "100".to_owned(),
        3 => "1000".to_owned(),
        e => format!("1e{e}"),
    }
}

/// Pixel points of a series, split where a point is not shown.
fn visible_runs(points: &[(f64, f64)], x: &Scale, y: &Scale) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for &(px, py) in points {
        if x.unit(px).is_some() && y.unit(py).is_some() {
            current.push((x.position(px), y.position(py)));
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn axis(label: &str, log: bool) -> Axis {
        Axis {
            label: label.to_owned(),
            log,
            ..Axis::default()
        }
    }

    fn numbers_after(svg: &str, attribute: &str) -> Vec<f64> {
        svg.split(attribute)
            .skip(1)
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn draws_every_series_with_a_legend_inside_the_frame() {
        let mut chart = LineChart::new("durability & <churn>", axis("x", false), axis("y", false));
        chart.push("r3", vec![(1.0, 0.5), (2.0, 0.9), (3.0, 1.0)]);
        chart.push("4+2", vec![(1.0, 0.2), (3.0, 0.7)]);
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains(">r3</text>") && svg.contains(">4+2</text>"));
        assert!(svg.contains("durability &amp; &lt;churn&gt;"));
        assert!(!svg.contains("<churn>"));
        let plot_right = chart.width - MARGIN_RIGHT;
        for x in numbers_after(&svg, "cx=\"") {
            assert!((MARGIN_LEFT - 0.01..=plot_right + 0.01).contains(&x), "{x}");
        }
        for y in numbers_after(&svg, "cy=\"") {
            assert!(
                (MARGIN_TOP - 0.01..=chart.height - MARGIN_BOTTOM + 0.01).contains(&y),
                "{y}"
            );
        }
    }

    #[test]
    fn larger_values_are_drawn_higher() {
        let mut chart = LineChart::new("t", axis("x", true), axis("y", true));
        chart.push("s", vec![(1.0, 1e-3), (10.0, 1.0), (100.0, 1e3)]);
        let svg = chart.to_svg();
        let xs = numbers_after(&svg, "cx=\"");
        let ys = numbers_after(&svg, "cy=\"");
        assert!(xs[0] < xs[1] && xs[1] < xs[2]);
        assert!(ys[0] > ys[1] && ys[1] > ys[2]);
        // Evenly spaced decades are evenly spaced on a log axis.
        assert!(((xs[1] - xs[0]) - (xs[2] - xs[1])).abs() < 0.2);
        assert!(((ys[0] - ys[1]) - (ys[1] - ys[2])).abs() < 0.2);
    }

    #[test]
    fn a_log_axis_leaves_out_what_it_cannot_show_and_breaks_the_line() {
        let mut chart = LineChart::new("t", axis("x", false), axis("y", true));
        chart.push(
            "s",
            vec![(1.0, 1.0), (2.0, 10.0), (3.0, 0.0), (4.0, 5.0), (5.0, 50.0)],
        );
        let svg = chart.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_data() {
        let scale = Scale::fit(&axis("y", false), &[0.13, 0.97], 400.0, 0.0);
        let ticks = scale.ticks(&axis("y", false));
        let labels: Vec<&str> = ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let log = Scale::fit(&axis("y", true), &[0.003, 250.0], 400.0, 0.0);
        let labels: Vec<String> = log
            .ticks(&axis("y", true))
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(labels, ["1e-3", "0.01", "0.1", "1", "10", "100", "1000"]);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.5e6), 2e6);
    }

    #[test]
    fn given_ticks_and_ranges_are_used_as_given() {
        let x = Axis {
            label: "mean session".to_owned(),
            log: true,
            range: None,
            ticks: Some(vec![
                (900.0, "15 min".to_owned()),
                (3600.0, "1 h".to_owned()),
            ]),
        };
        let y = Axis {
            range: Some((0.0, 1.0)),
            ..axis("durability", false)
        };
        let mut chart = LineChart::new("t", x, y);
        chart.push("s", vec![(900.0, 0.5), (3600.0, 1.0)]);
        let svg = chart.to_svg();
        assert!(svg.contains(">15 min</text>") && svg.contains(">1 h</text>"));
        let ys = numbers_after(&svg, "cy=\"");
        assert!(
            (ys[1] - MARGIN_TOP).abs() < 0.1,
            "1.0 is the top of a 0..1 axis"
        );
    }

    #[test]
    fn an_empty_chart_is_still_a_picture() {
        let svg = LineChart::new("nothing", axis("x", true), axis("y", true)).to_svg();
        assert!(svg.contains("</svg>") && !svg.contains("NaN"));
    }
}
