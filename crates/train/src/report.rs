//! Renders an evaluation (and the training history) as one self-contained HTML page with SVG
//! charts drawn by plotters.

use std::fmt::Write;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::eval::EvalReport;
use crate::metrics::EpochMetrics;

const BLUE: RGBColor = RGBColor(37, 99, 235);
const ORANGE: RGBColor = RGBColor(234, 88, 12);
const GREEN: RGBColor = RGBColor(22, 163, 74);
const GRID: RGBColor = RGBColor(226, 232, 240);
const INK: RGBColor = RGBColor(30, 41, 59);

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;\
background:#f8fafc;color:#1e293b}main{max-width:1100px;margin:0 auto;padding:24px}\
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 10px}.sub{color:#64748b}\
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}.card{background:#fff;border:1px solid \
#e2e8f0;border-radius:8px;padding:12px 18px;min-width:120px}.card b{display:block;font-size:1.6em}\
.card span{color:#64748b;font-size:.85em}.charts{display:flex;flex-wrap:wrap;gap:16px}\
.panel{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px;overflow-x:auto}\
table{border-collapse:collapse;background:#fff;font-size:.9em}th,td{padding:5px 12px;\
border-bottom:1px solid #e2e8f0;text-align:left}td.n{text-align:right;font-variant-numeric:\
tabular-nums}th{background:#f1f5f9}.empty{color:#64748b;font-style:italic}";

/// Text made safe for HTML (photo ids and class names come from users).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Chart labels are cut short so that a long class name cannot push a chart out of shape.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max - 1).chain(['…']).collect()
    }
}

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// The page: headline figures, curves, confusion heat map, per-class bars and tables.
pub fn render_html(report: &EvalReport, history: &[EpochMetrics]) -> String {
    let mut html = String::new();
    let title = format!("{} {}", report.model, report.version);
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} — evaluation</title><style>{STYLE}</style></head><body><main>\
         <h1>{}</h1><div class=\"sub\">evaluated on {}</div><div class=\"cards\">",
        escape(&title),
        escape(&title),
        escape(&report.dataset),
    );
    for (value, label) in [
        (percent(report.top1), "top-1 accuracy".to_string()),
        (
            percent(report.top5),
            format!("top-{} accuracy", report.top_k),
        ),
        (format!("{:.3}", report.macro_f1), "macro F1".to_string()),
        (report.images.to_string(), "photos".to_string()),
        (report.bad_files.len().to_string(), "bad files".to_string()),
    ] {
        let _ = write!(
            html,
            "<div class=\"card\"><b>{}</b><span>{}</span></div>",
            escape(&value),
            escape(&label)
        );
    }
    html.push_str("</div>");

    if !history.is_empty() {
        html.push_str("<h2>Training</h2><div class=\"charts\">");
        let epochs = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
            history
                .iter()
                .filter_map(|m| f(m).map(|v| ((m.epoch + 1) as f64, v)))
                .collect()
        };
        let loss = [
            ("train", BLUE, epochs(&|m| Some(m.train_loss))),
            ("validation", ORANGE, epochs(&|m| m.validation_loss)),
        ];
        let accuracy = [
            ("train", BLUE, epochs(&|m| Some(m.train_accuracy))),
            ("validation", ORANGE, epochs(&|m| m.validation_accuracy)),
        ];
        panel(&mut html, line_chart("Loss", "loss", &loss, false));
        panel(
            &mut html,
            line_chart("Accuracy", "accuracy", &accuracy, true),
        );
        html.push_str("</div>");
    }

    let names: Vec<&str> = report.classes.iter().map(|c| c.name.as_str()).collect();
    html.push_str("<h2>Confusion matrix</h2><div class=\"sub\">rows: true class, columns: predicted class; shade: share of the row</div>");
    panel(&mut html, confusion_chart(&names, &report.confusion));
    html.push_str("<h2>Per class</h2>");
    panel(&mut html, class_bars(report));
    html.push_str(
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>photos</th></tr>",
    );
    for class in &report.classes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.3}</td><td class=\"n\">{}</td></tr>",
            escape(&class.name),
            percent(class.precision),
            percent(class.recall),
            class.f1,
            class.support
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Calibration</h2>");
    let figures = &report.calibration;
    let _ = write!(
        html,
        "<p>Expected calibration error ({} bins) of the plain scores: {:.3}",
        bestiary_model::calibration::ECE_BINS,
        figures.ece_uncalibrated
    );
    match (figures.temperature, figures.ece_calibrated) {
        (Some(t), Some(ece)) => {
            let _ = write!(html, "; at the fitted temperature {t:.3}: {ece:.3}.");
        }
        _ => html.push_str("; this model has no fitted temperature."),
    }
    if let Some(rejected) = figures.rejected_as_unknown {
        let _ = write!(
            html,
            " The \"unknown\" detector rejects {} of these photos (all of the classes).",
            percent(rejected)
        );
    }
    html.push_str("</p>");

    html.push_str("<h2>Most confident mistakes</h2>");
    if report.worst_mistakes.is_empty() {
        html.push_str("<p class=\"empty\">No mistakes.</p>");
    } else {
        html.push_str("<table><tr><th>photo</th><th>true class</th><th>predicted</th><th>confidence</th></tr>");
        for mistake in &report.worst_mistakes {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(&mistake.id),
                escape(&mistake.true_label),
                escape(&mistake.predicted_label),
                percent(mistake.score)
            );
        }
        html.push_str("</table>");
    }

    html.push_str("<h2>Bad files</h2>");
    if report.bad_files.is_empty() {
        html.push_str("<p class=\"empty\">Every photo could be read.</p>");
    } else {
        html.push_str("<table><tr><th>photo</th><th>problem</th><th>details</th></tr>");
        for file in &report.bad_files {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&file.id),
                escape(&file.code),
                escape(&file.reason)
            );
        }
        html.push_str("</table>");
    }
    let _ = write!(
        html,
        "<p class=\"sub\">bestiary {}</p></main></body></html>",
        escape(env!("CARGO_PKG_VERSION"))
    );
    html
}

/// Appends a chart, or a note when drawing failed (the rest of the page is still useful).
fn panel(html: &mut String, chart: Result<String, String>) {
    match chart {
        Ok(svg) => {
            let _ = write!(html, "<div class=\"panel\">{svg}</div>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=\"empty\">chart unavailable: {}</p>",
                escape(&e)
            );
        }
    }
}

/// One curve of a line chart: its legend, colour and (epoch, value) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Curves over epochs; `unit` pins the y axis to 0..1.
fn line_chart(title: &str, y_desc: &str, series: &[Series], unit: bool) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let points = series.iter().flat_map(|s| s.2.iter());
        let last = points.clone().map(|p| p.0).fold(1.0, f64::max);
        let (low, high) = if unit {
            (0.0, 1.0)
        } else {
            let high = points
                .map(|p| p.1)
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            (0.0, if high > 0.0 { high * 1.1 } else { 1.0 })
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18).into_font().color(&INK))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(1.0..last.max(2.0), low..high)
            .map_err(err)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .bold_line_style(GRID)
            .x_desc("epoch")
            .y_desc(y_desc)
            // Epochs are whole numbers: ticks between them stay blank.
            .x_labels((last as usize).clamp(2, 12))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                if unit {
                    format!("{:.0}%", y * 100.0)
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()
            .map_err(err)?;
        for (name, color, points) in series {
            if points.is_empty() {
                continue;
            }
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            // Markers show single-epoch runs too, which have no line to draw.
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            // Loss falls and accuracy rises: the legend goes where the curves usually are not.
            .position(if unit {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .background_style(WHITE.mix(0.9))
            .border_style(GRID)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The confusion matrix as a heat map with the counts in the cells; rows shaded by their share
/// so that small classes stand out as much as big ones.
fn confusion_chart(names: &[&str], confusion: &[Vec<usize>]) -> Result<String, String> {
    let n = names.len().max(1) as i32;
    let cell = (480 / n).clamp(12, 48);
    // Room above the grid for the rotated column labels, about 7 px per character.
    let longest = names
        .iter()
        .map(|n| n.chars().count().min(18))
        .max()
        .unwrap_or(1) as i32;
    let (left, top) = (150, 34 + 7 * longest);
    let size = ((left + cell * n + 20) as u32, (top + cell * n + 20) as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let label = ("sans-serif", 12).into_font().color(&INK);
        let axis = ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(100, 116, 139));
        root.draw(&Text::new(
            "predicted →",
            (left, 4),
            axis.pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            "true ↓",
            (left - 6, top - 6),
            axis.pos(Pos::new(HPos::Right, VPos::Bottom)),
        ))
        .map_err(err)?;
        for (i, name) in names.iter().enumerate() {
            let offset = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                short(name, 20),
                (left - 6, top + offset),
                label.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                short(name, 18),
                (left + offset, top - 6),
                label
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        for (t, row) in confusion.iter().enumerate() {
            let total: usize = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let mix =
                    |from: u8, to: u8| (from as f64 + (to as f64 - from as f64) * share) as u8;
                let fill = RGBColor(mix(248, BLUE.0), mix(250, BLUE.1), mix(252, BLUE.2));
                let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    fill.filled(),
                ))
                .map_err(err)?;
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], GRID))
                    .map_err(err)?;
                if cell >= 20 && count > 0 {
                    let ink = if share > 0.5 { WHITE } else { INK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        ("sans-serif", 12)
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Precision, recall and F1 of each class as grouped horizontal bars.
fn class_bars(report: &EvalReport) -> Result<String, String> {
    let rows = report.classes.len() as i32;
    let (left, top, width, row_height) = (150, 34, 420, 42);
    let size = (
        (left + width + 30) as u32,
        (top + row_height * rows + 30) as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let label = ("sans-serif", 12).into_font().color(&INK);
        let bottom = top + row_height * rows;
        for tick in 0..=4 {
            let x = left + width * tick / 4;
            root.draw(&PathElement::new(vec![(x, top), (x, bottom)], GRID))
                .map_err(err)?;
            root.draw(&Text::new(
                format!("{}%", tick * 25),
                (x, bottom + 6),
                label.pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        let metrics = [("precision", BLUE), ("recall", ORANGE), ("F1", GREEN)];
        for (k, (name, color)) in metrics.iter().enumerate() {
            let x = left + k as i32 * 110;
            root.draw(&Rectangle::new([(x, 8), (x + 12, 20)], color.filled()))
                .map_err(err)?;
            root.draw(&Text::new(
                *name,
                (x + 18, 14),
                label.pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        for (i, class) in report.classes.iter().enumerate() {
            let y = top + i as i32 * row_height;
            root.draw(&Text::new(
                short(&class.name, 20),
                (left - 8, y + row_height / 2),
                label.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
            for (k, value) in [class.precision, class.recall, class.f1].iter().enumerate() {
                let bar_top = y + 5 + k as i32 * 11;
                let length = (value.clamp(0.0, 1.0) * width as f64).round() as i32;
                root.draw(&Rectangle::new(
                    [(left, bar_top), (left + length.max(1), bar_top + 9)],
                    metrics[k].1.filled(),
                ))
                .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{EvalReport, Predictions};
    use bestiary_dataset::SkippedFile;

    #[test]
    fn page_has_charts_and_escapes_user_text() {
        let classes = vec!["<b>cat</b>".to_string(), "dog & co".to_string()];
        let predictions = Predictions {
            ids: vec!["a\"<script>.jpg".into(), "b.jpg".into()],
            labels: vec![0, 1],
            probabilities: vec![vec![0.2, 0.8], vec![0.1, 0.9]],
            ..Default::default()
        };
        let bad = vec![SkippedFile {
            id: "<evil>.png".into(),
            code: "corrupt".into(),
            reason: "truncated".into(),
        }];
        let report =
            EvalReport::from_predictions("m", "v", "data", &classes, &predictions, bad, None);
        let history = vec![EpochMetrics {
            epoch: 0,
            train_loss: 1.0,
            train_accuracy: 0.5,
            validation_loss: Some(0.9),
            validation_accuracy: Some(0.6),
            learning_rate: 1e-3,
            images_per_second: 10.0,
            seconds: 1.0,
        }];
        let html = render_html(&report, &history);
        assert!(html.matches("<svg").count() >= 4, "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<evil>"));
        assert!(!html.contains("<b>cat"));
        assert!(html.contains("&lt;evil&gt;.png"));
        assert!(html.contains("dog &amp; co"));
        assert!(!html.contains("chart unavailable"), "{html}");
    }
}
