//! SVG line charts, small and self-contained (no fonts or scripts to
//! fetch): what `lego bench ... --plot DIR` and `lego sim --plot DIR`
//! write. Each series is one `<polyline class="series" data-label="...">`
//! (with a `<circle class="point">` per point when asked), so a test reads
//! a chart back by its labels. The x axis is linear or log2; y starts at 0.
//! A chart with categories draws grouped bars instead: each series is one
//! `<g class="series" data-label="...">` of `<rect class="bar">`, a bar
//! per category (a point's x is its category's index).
#![forbid(unsafe_code)]

use std::fmt::Write;

/// Colours, one per series in turn.
pub const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#7f7f7f",
];

/// One line of a chart.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub label: String,
    /// (x, y), in the order they are joined.
    pub points: Vec<(f64, f64)>,
    /// A colour of its own (else the next of [`COLOURS`]).
    pub colour: Option<&'static str>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            colour: None,
        }
    }

    pub fn coloured(mut self, colour: &'static str) -> Series {
        self.colour = Some(colour);
        self
    }
}

/// A chart: its axes and series.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The x axis in powers of two (latencies, sizes).
    pub x_log2: bool,
    /// The x range (else the data's).
    pub x_range: Option<(f64, f64)>,
    /// The top of the y axis (else the data's largest value, plus 5%).
    pub y_max: Option<f64>,
    /// A dot on every point (for series of a few points).
    pub markers: bool,
    /// Names along x: grouped bars, not lines.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick's label: 12k, 350, 2.5, 0.25.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A round step (1, 2 or 5 times a power of ten) for about `n` ticks over `span`.
pub fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

impl Chart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let (w, h, l, r, t, b) = (720.0, 400.0, 70.0, 24.0, 40.0, 50.0);
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let bars = !self.categories.is_empty();
        let n_cat = self.categories.len() as f64;
        let fx = |v: f64| if self.x_log2 { v.max(1e-12).log2() } else { v };
        let (x0, x1) = self
            .x_range
            .map(|(a, b)| (fx(a), fx(b)))
            .unwrap_or_else(|| {
                let lo = all().map(|p| fx(p.0)).fold(f64::INFINITY, f64::min);
                let hi = all().map(|p| fx(p.0)).fold(f64::NEG_INFINITY, f64::max);
                match lo.is_finite() {
                    true if hi > lo => (lo, hi),
                    true => (lo - 1.0, lo + 1.0),
                    false => (0.0, 1.0),
                }
            });
        // Unless given, the top of y is the next round tick above the data.
        let y_max = self.y_max.unwrap_or_else(|| {
            let top = all().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
            let step = nice_step(top, 4.0);
            (top / step).ceil() * step
        });
        let y_step = match self.y_max {
            Some(m) => m / 4.0,
            None => nice_step(y_max, 4.0),
        };
        let x = |v: f64| l + (w - l - r) * (fx(v) - x0) / (x1 - x0).max(1e-12);
        let y = |v: f64| h - b - (h - t - b) * v / y_max;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<title>{}</title>"#, esc(&self.title));
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            esc(&self.title)
        );
        let y_ticks = (y_max / y_step).round() as usize;
        for i in 0..=y_ticks {
            let v = y_step * i as f64;
            let _ = writeln!(
                s,
                r##"<line x1="{l}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - r,
                y(v),
                y(v),
                l - 6.0,
                y(v) + 4.0,
                fmt_tick(v)
            );
        }
        for (i, name) in self.categories.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x(i as f64),
                h - b + 18.0,
                esc(name)
            );
        }
        let ticks: Vec<f64> = match self.x_log2 {
            _ if bars => Vec::new(),
            true => {
                let (a, z) = (x0.floor() as i32, x1.ceil() as i32);
                let step = ((z - a) / 8).max(1);
                (a..=z)
                    .step_by(step as usize)
                    .map(|e| 2f64.powi(e))
                    .filter(|v| (x0..=x1).contains(&v.log2()))
                    .collect()
            }
            false => {
                let step = nice_step(x1 - x0, 6.0);
                let first = (x0 / step).ceil() as i64;
                let last = (x1 / step).floor() as i64;
                (first..=last).map(|i| i as f64 * step).collect()
            }
        };
        for v in ticks {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x(v),
                h - b + 18.0,
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
            (l + w - r) / 2.0,
            h - 10.0,
            esc(&self.x_label),
            h / 2.0,
            h / 2.0,
            esc(&self.y_label)
        );
        let _ = writeln!(
            s,
            r#"<line x1="{l}" x2="{l}" y1="{t}" y2="{}" stroke="black"/><line x1="{l}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#,
            h - b,
            w - r,
            h - b,
            h - b
        );
        for (i, se) in self.series.iter().enumerate() {
            let colour = se.colour.unwrap_or(COLOURS[i % COLOURS.len()]);
            if bars {
                let n = self.series.len().max(1) as f64;
                let slot = (w - l - r) / n_cat.max(1.0) * 0.8 / n;
                let _ = writeln!(
                    s,
                    r#"<g class="series" data-label="{}" fill="{colour}">"#,
                    esc(&se.label)
                );
                for (a, v) in &se.points {
                    let left = x(*a) - slot * n / 2.0 + slot * i as f64;
                    let _ = writeln!(
                        s,
                        r#"<rect class="bar" x="{left:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
                        y(*v),
                        slot * 0.9,
                        (y(0.0) - y(*v)).max(0.0)
                    );
                }
                s.push_str("</g>\n");
            }
            let d: Vec<String> = se
                .points
                .iter()
                .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
                .collect();
            if !bars {
                let _ = writeln!(
                    s,
                    r#"<polyline class="series" data-label="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                    esc(&se.label),
                    d.join(" ")
                );
            }
            if self.markers {
                for (a, b) in &se.points {
                    let _ = writeln!(
                        s,
                        r#"<circle class="point" data-label="{}" cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"/>"#,
                        esc(&se.label),
                        x(*a),
                        y(*b)
                    );
                }
            }
            let ly = t + 8.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                w - r - 250.0,
                w - r - 230.0,
                w - r - 224.0,
                ly + 4.0,
                esc(&se.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_one_labelled_polyline_inside_the_plot() {
        let c = Chart {
            title: "a <b>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            markers: true,
            series: vec![
                Series::new("one", vec![(1.0, 2.0), (3.0, 4.0)]),
                Series::new("two \"q\"", vec![(2.0, 1.0)]),
            ],
            ..Chart::default()
        };
        let svg = c.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert_eq!(svg.matches("class=\"point\"").count(), 3);
        assert!(svg.contains("data-label=\"two &quot;q&quot;\""));
        assert!(svg.contains("a &lt;b&gt;"));
        // Every point lies within the plot area.
        for pts in svg.split("points=\"").skip(1) {
            for p in pts.split('"').next().unwrap().split_whitespace() {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (70.0..=696.0).contains(&x) && (40.0..=350.0).contains(&y),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn a_log2_axis_has_power_of_two_ticks() {
        let c = Chart {
            x_log2: true,
            series: vec![Series::new("l", vec![(4.0, 1.0), (1024.0, 2.0)])],
            ..Chart::default()
        };
        let svg = c.render();
        for t in ["4", "16", "64", "256", "1024"] {
            assert!(svg.contains(&format!(">{t}</text>")), "{t}: {svg}");
        }
    }

    #[test]
    fn categories_make_one_group_of_bars_per_series() {
        let c = Chart {
            categories: vec!["a".into(), "b".into(), "c".into()],
            series: vec![
                Series::new("local", vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
                Series::new("lego", vec![(0.0, 0.5), (1.0, 1.0), (2.0, 1.5)]),
            ],
            ..Chart::default()
        };
        let svg = c.render();
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert_eq!(svg.matches("class=\"bar\"").count(), 6);
        assert!(!svg.contains("<polyline"));
        assert!(svg.contains(">b</text>"));
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(105.0, 6.0), 20.0);
        assert_eq!(nice_step(16.0, 4.0), 5.0);
        assert_eq!(nice_step(0.3, 4.0), 0.1);
        let c = Chart {
            x_range: Some((0.0, 105.0)),
            series: vec![Series::new("s", vec![(25.0, 15.3), (100.0, 1.2)])],
            ..Chart::default()
        };
        let svg = c.render();
        for t in [
            ">0</text>",
            ">20</text>",
            ">100</text>",
            ">15</text>",
            ">20</text>",
        ] {
            assert!(svg.contains(t), "{t}: {svg}");
        }
    }

    #[test]
    fn an_empty_chart_still_renders() {
        assert!(Chart::default().render().contains("</svg>"));
    }
}
