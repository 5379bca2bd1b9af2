//! What every benchmark writes: a markdown table (printed and saved) and an SVG
//! chart, both under `target/bench/`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use plotters::prelude::*;

pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("**{}**\n\n| {} |\n|", self.title, self.header.join(" | "));
        for (i, _) in self.header.iter().enumerate() {
            s.push_str(if i < 2 { "---|" } else { "---:|" });
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// Horizontal bars, one per (group, series), grouped in the order they are added.
pub struct Chart {
    title: String,
    unit: String,
    bars: Vec<(String, String, f64)>,
}

impl Chart {
    pub fn new(title: &str, unit: &str) -> Self {
        Chart {
            title: title.to_string(),
            unit: unit.to_string(),
            bars: Vec::new(),
        }
    }

    pub fn bar(&mut self, group: &str, series: &str, value: f64) {
        self.bars
            .push((group.to_string(), series.to_string(), value));
    }

    fn svg(&self, path: &PathBuf) -> Result<()> {
        const ROW: i32 = 22;
        const LEFT: i32 = 460;
        const WIDTH: i32 = 1100;
        let height = 70 + ROW * self.bars.len() as i32 + 40;
        let root = SVGBackend::new(path, (WIDTH as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let text = |size| ("sans-serif", size).into_font().color(&BLACK);
        root.draw(&Text::new(self.title.clone(), (10, 12), text(20)))?;
        let max = self.bars.iter().map(|b| b.2).fold(0.0, f64::max).max(1e-9);
        let span = (WIDTH - LEFT - 140) as f64;
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
        ];
        let mut series: Vec<&str> = Vec::new();
        for (i, (group, name, value)) in self.bars.iter().enumerate() {
            let k = series.iter().position(|s| s == name).unwrap_or_else(|| {
                series.push(name);
                series.len() - 1
            });
            let y = 50 + ROW * i as i32;
            let w = (value / max * span) as i32;
            root.draw(&Text::new(
                format!("{group}: {name}"),
                (10, y + 4),
                text(13),
            ))?;
            root.draw(&Rectangle::new(
                [(LEFT, y), (LEFT + w.max(1), y + ROW - 4)],
                palette[k % palette.len()].filled(),
            ))?;
            root.draw(&Text::new(
                format!("{value:.3} {}", self.unit),
                (LEFT + w + 6, y + 4),
                text(13),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

/// `target/bench/`, made if missing.
pub fn dir() -> Result<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
    Ok(d)
}

/// Writes `NAME.md` and `NAME.svg`.
pub fn save(name: &str, markdown: &str, chart: &Chart) -> Result<()> {
    let d = dir()?;
    std::fs::write(d.join(format!("{name}.md")), markdown)?;
    chart
        .svg(&d.join(format!("{name}.svg")))
        .with_context(|| format!("drawing {name}.svg"))?;
    eprintln!("wrote {}/{name}.md and {name}.svg", d.display());
    Ok(())
}
