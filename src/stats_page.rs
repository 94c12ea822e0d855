//! `stats --html FILE`: the same figures as `stats`, as one self-contained HTML page
//! (no script, no fetched asset) with, per model, charts over time of first-pass success
//! and net supervisor tokens saved, day by day. The figures are also embedded as the
//! `stats --json` document, so a reader (or a test) can check the page against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ledger::StatRow;
use crate::stats::{Figures, Stats};

/// One day of one model: its runs, first-pass successes and net savings.
#[derive(Debug, Clone, Default, PartialEq)]
struct Day {
    runs: u64,
    first_pass: u64,
    saved_net: i64,
}

/// The page for `stats`, whose runs are `rows` (oldest first).
pub fn page(stats: &Stats, rows: &[StatRow]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>execute-local-task stats</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}\n\
         table{border-collapse:collapse;margin:1em 0}\n\
         td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\n\
         td:first-child,td:nth-child(2),th{text-align:left}\n\
         .met{color:#070}.unmet{color:#a00}\n\
         svg{border:1px solid #ccc;margin:.5em 1em .5em 0}\n\
         </style>\n</head>\n<body>\n",
    );
    let since = stats
        .since
        .as_deref()
        .map_or_else(String::new, |since| format!(" since {}", html(since)));
    let _ = writeln!(
        out,
        "<h1>execute-local-task stats</h1>\n<p>{} runs in {}{since}</p>",
        stats.total.runs,
        html(&stats.scope)
    );
    figures_table(&mut out, stats);
    targets_table(&mut out, stats);
    charts(&mut out, rows);
    let json = serde_json::to_string(stats).unwrap_or_default();
    // `</` would end the script element early.
    let _ = writeln!(
        out,
        "<script type=\"application/json\" id=\"stats\">{}</script>\n</body>\n</html>",
        json.replace("</", "<\\/")
    );
    out
}

fn figures_table(out: &mut String, stats: &Stats) {
    out.push_str(
        "<h2>Per task kind and model</h2>\n<table id=\"figures\">\n<tr><th>kind</th><th>model</th>\
         <th>runs</th><th>delegation</th><th>first pass</th><th>after repair</th>\
         <th>escalations</th><th>good/acceptable/poor</th><th>phase</th>\
         <th>median model ms</th><th>median test ms</th><th>local tokens</th><th>saved gross</th><th>saved net</th></tr>\n",
    );
    for pair in stats.pairs.iter().chain(std::iter::once(&stats.total)) {
        row(out, pair);
    }
    out.push_str("</table>\n");
}

fn row(out: &mut String, pair: &Figures) {
    let total = pair.kind.is_empty() && pair.model.is_empty();
    let kind = if total { "total" } else { &pair.kind };
    let cells = [
        ("kind", html(kind)),
        ("model", html(&pair.model)),
        ("runs", pair.runs.to_string()),
        ("delegation_rate", percent(pair.delegation_rate)),
        ("first_pass_rate", percent(pair.first_pass_rate)),
        ("after_repair", pair.after_repair.to_string()),
        ("escalations", pair.escalations.to_string()),
        (
            "verdicts",
            format!("{}/{}/{}", pair.good, pair.acceptable, pair.poor),
        ),
        (
            "phase",
            pair.phase
                .map_or_else(String::new, |p| p.as_str().to_owned()),
        ),
        (
            "median_model_ms",
            pair.median_model_ms
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        ),
        (
            "median_test_ms",
            pair.median_test_ms
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        ),
        ("local_tokens", pair.local_tokens.to_string()),
        ("saved_gross", pair.saved_gross.to_string()),
        ("saved_net", pair.saved_net.to_string()),
    ];
    let id = if total {
        "total".to_owned()
    } else {
        html(&format!("{} {}", pair.kind, pair.model))
    };
    let _ = write!(out, "<tr data-pair=\"{id}\">");
    for (class, value) in cells {
        let _ = write!(out, "<td class=\"{class}\">{value}</td>");
    }
    out.push_str("</tr>\n");
}

fn targets_table(out: &mut String, stats: &Stats) {
    out.push_str(
        "<h2>Targets</h2>\n<table id=\"targets\">\n<tr><th>target</th><th>goal</th><th>now</th><th></th></tr>\n",
    );
    for target in &stats.targets {
        let (goal, now) = if target.name == "regressions" {
            (
                "0".to_owned(),
                target
                    .value
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
            )
        } else {
            (
                format!("≥ {}", percent(Some(target.goal))),
                percent(target.value),
            )
        };
        let (class, met) = if target.met {
            ("met", "met")
        } else {
            ("unmet", "not met")
        };
        let _ = writeln!(
            out,
            "<tr data-target=\"{}\"><td>{}</td><td>{goal}</td><td class=\"now\">{now}</td><td class=\"{class}\">{met}</td></tr>",
            html(&target.name),
            html(&target.name.replace('_', " "))
        );
    }
    out.push_str("</table>\n");
}

/// Per model, two charts over the days with runs: first-pass success (0–100%) and the
/// day's net supervisor tokens saved.
fn charts(out: &mut String, rows: &[StatRow]) {
    let mut models: BTreeMap<&str, BTreeMap<&str, Day>> = BTreeMap::new();
    for row in rows {
        let day = models
            .entry(row.model.as_str())
            .or_default()
            .entry(row.day.as_str())
            .or_default();
        day.runs += 1;
        day.first_pass += u64::from(row.status == "success" && row.attempts == 1);
        day.saved_net += row.saved_net.unwrap_or(0);
    }
    out.push_str("<h2>Over time</h2>\n");
    for (model, days) in &models {
        let _ = writeln!(out, "<h3>{}</h3>", html(model));
        #[allow(clippy::cast_precision_loss)] // Run and token counts far below 2^52.
        let first_pass: Vec<(&str, f64)> = days
            .iter()
            .map(|(day, d)| (*day, d.first_pass as f64 * 100.0 / d.runs as f64))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let saved: Vec<(&str, f64)> = days
            .iter()
            .map(|(day, d)| (*day, d.saved_net as f64))
            .collect();
        chart(out, "first-pass success %", &first_pass, Some((0.0, 100.0)));
        chart(out, "net supervisor tokens saved", &saved, None);
    }
}

/// A line chart of `points` (day, value) as inline SVG, each point titled with its value.
fn chart(out: &mut String, title: &str, points: &[(&str, f64)], range: Option<(f64, f64)>) {
    const W: f64 = 360.0;
    const H: f64 = 160.0;
    const PAD: f64 = 24.0;
    let (low, high) = range.unwrap_or_else(|| {
        let low = points.iter().map(|p| p.1).fold(0.0_f64, f64::min);
        let high = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
        (low, if high > low { high } else { low + 1.0 })
    });
    #[allow(clippy::cast_precision_loss)]
    let step = (W - 2.0 * PAD) / (points.len().max(2) - 1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let at = |n: usize, value: f64| {
        (
            PAD + step * n as f64,
            H - PAD - (value - low) / (high - low) * (H - 2.0 * PAD),
        )
    };
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{PAD}\" y=\"14\" font-size=\"12\">{}</text>",
        html(title),
        html(title)
    );
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(n, (_, value))| {
            let (x, y) = at(n, *value);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        out,
        "<polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    for (n, (day, value)) in points.iter().enumerate() {
        let (x, y) = at(n, *value);
        let _ = write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#36c\"><title>{}: {value:.0}</title></circle>",
            html(day)
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let _ = write!(
            out,
            "<text x=\"{PAD}\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            H - 6.0,
            html(first.0),
            W - PAD,
            H - 6.0,
            html(last.0)
        );
    }
    out.push_str("</svg>\n");
}

#[allow(clippy::cast_possible_truncation)] // A rounded percentage.
fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(
        || "-".to_owned(),
        |rate| format!("{}%", (rate * 100.0).round() as i64),
    )
}

/// `text` safe inside an element or a quoted attribute.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
