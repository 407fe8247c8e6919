//! Grouped bar charts as plain SVG: one group per scenario row, one bar per target, the
//! median as the bar and the range of the repeats as a whisker.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    pub color: &'static str,
}

#[derive(Clone, Copy)]
pub struct Bar {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

pub struct Group {
    pub label: String,
    /// One per series; `None` where that target has no figure.
    pub bars: Vec<Option<Bar>>,
}

pub struct Chart {
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
    pub groups: Vec<Group>,
    /// Horizontal lines across the plot, with a label: a reference or a target.
    pub lines: Vec<(f64, String)>,
}

const BAR: f64 = 34.0;
const GAP: f64 = 30.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
/// Room right of the plot for the labels of reference lines.
const LINE_LABELS: f64 = 96.0;
const TOP: f64 = 64.0;
const PLOT: f64 = 250.0;
const BOTTOM: f64 = 64.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Three significant digits, with k and M for large values.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e5 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.2}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// [`compact`] without trailing zeros: 1.5k, 1k, 0.
fn tick_label(v: f64) -> String {
    let text = compact(v);
    let (number, suffix) = match text.strip_suffix(['k', 'M']) {
        Some(n) => (n.to_string(), &text[n.len()..]),
        None => (text.clone(), ""),
    };
    let number = if number.contains('.') {
        number
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        number
    };
    format!("{number}{suffix}")
}

/// A round step giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

pub fn render(chart: &Chart) -> String {
    let per_group = chart.series.len() as f64 * BAR + GAP;
    let right = if chart.lines.is_empty() {
        RIGHT
    } else {
        LINE_LABELS
    };
    let plot_end = LEFT + per_group * chart.groups.len() as f64;
    let width = (plot_end + right)
        .max(LEFT + 9.5 * chart.title.chars().count() as f64)
        .max(420.0);
    let plot_end = width - right;
    // Groups share the plot's width, bars centred in each group's slot.
    let slot = (plot_end - LEFT) / chart.groups.len().max(1) as f64;
    let height = TOP + PLOT + BOTTOM;
    let top_value = chart
        .groups
        .iter()
        .flat_map(|g| g.bars.iter().flatten())
        .map(|b| {
            if b.high.is_finite() {
                b.high.max(b.value)
            } else {
                b.value
            }
        })
        .chain(chart.lines.iter().map(|(v, _)| *v))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let step = tick_step(if top_value > 0.0 {
        top_value * 1.12
    } else {
        1.0
    });
    let ceiling = (top_value * 1.12 / step).ceil().max(1.0) * step;
    let y = |v: f64| TOP + PLOT - (v / ceiling).clamp(0.0, 1.0) * PLOT;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&chart.title)
    );
    // Legend.
    let mut x = LEFT;
    for series in &chart.series {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="34" width="12" height="12" fill="{}"/><text x="{}" y="44" font-size="12">{}</text>"#,
            series.color,
            x + 16.0,
            escape(&series.name)
        );
        x += 28.0 + 7.5 * series.name.len() as f64;
    }
    // Axis, grid and ticks.
    let mut tick = 0.0;
    while tick <= ceiling + step / 2.0 {
        let ty = y(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#e4e4e4\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            plot_end,
            LEFT - 6.0,
            ty + 4.0,
            tick_label(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        TOP + PLOT / 2.0,
        escape(&chart.unit)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>",
        TOP + PLOT,
        plot_end,
        TOP + PLOT
    );
    // Bars.
    for (gi, group) in chart.groups.iter().enumerate() {
        let gx = LEFT + gi as f64 * slot + (slot - chart.series.len() as f64 * BAR) / 2.0;
        for (si, bar) in group.bars.iter().enumerate() {
            let bx = gx + si as f64 * BAR;
            let Some(bar) = bar.filter(|b| b.value.is_finite()) else {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\" fill=\"#888\">n/a</text>",
                    bx + BAR / 2.0,
                    TOP + PLOT - 4.0
                );
                continue;
            };
            let top = y(bar.value);
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                bx + 2.0,
                BAR - 4.0,
                TOP + PLOT - top,
                chart.series[si].color,
                escape(&chart.series[si].name),
                compact(bar.value)
            );
            if bar.low.is_finite() && bar.high.is_finite() && bar.high > bar.low {
                let (yl, yh, cx) = (y(bar.low), y(bar.high), bx + BAR / 2.0);
                let _ = writeln!(
                    s,
                    "<path d=\"M{:.1} {yl:.1}H{:.1}M{cx:.1} {yl:.1}V{yh:.1}M{:.1} {yh:.1}H{:.1}\" stroke=\"#333\" fill=\"none\"/>",
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                );
            }
            let label_y = y(bar.value.max(if bar.high.is_finite() {
                bar.high
            } else {
                bar.value
            })) - 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{label_y:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                bx + BAR / 2.0,
                compact(bar.value)
            );
        }
        // Group label, broken at the comma into two lines.
        let cx = gx + chart.series.len() as f64 * BAR / 2.0;
        let (first, second) = match group.label.split_once(", ") {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (group.label.clone(), String::new()),
        };
        for (line, text) in [first, second].iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                TOP + PLOT + 16.0 + 14.0 * line as f64,
                escape(text)
            );
        }
    }
    for (value, label) in &chart.lines {
        let ly = y(*value);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"#555\" stroke-dasharray=\"5 4\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#333\">{}</text>",
            plot_end,
            plot_end + 4.0,
            ly + 3.5,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(1234.0), 250.0);
        assert_eq!(tick_step(0.9), 0.2);
    }

    #[test]
    fn compact_keeps_three_digits() {
        assert_eq!(compact(12345.0), "12.3k");
        assert_eq!(compact(1.5), "1.50");
        assert_eq!(compact(250_000.0), "250k");
        assert_eq!(tick_label(1500.0), "1.5k");
        assert_eq!(tick_label(1000.0), "1k");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(20.0), "20");
    }

    #[test]
    fn a_chart_is_one_svg_element() {
        let chart = Chart {
            title: "t & u".into(),
            unit: "Gbit/s".into(),
            series: vec![Series {
                name: "a".into(),
                color: "#000",
            }],
            groups: vec![Group {
                label: "x, y".into(),
                bars: vec![Some(Bar {
                    value: 1.0,
                    low: 0.9,
                    high: 1.1,
                })],
            }],
            lines: vec![(1.0, "ref".into())],
        };
        let svg = render(&chart);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &amp; u"));
    }
}
