//! The loss curve: a CSV log (`step,lr,train_loss,eval_loss,eval_ppl,tokens_per_s`) and a
//! small PNG line plot rasterised here (train loss blue, held-out loss red, step on x, loss on
//! y, with min/max labels in a 3x5 pixel font).

use bitnet_core::{Error, Result};
use std::path::Path;

/// One logged step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRow {
    /// Step (1-based: after this many updates).
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Training loss of the step's batch.
    pub train_loss: f32,
    /// Held-out loss, when evaluated at this step.
    pub eval_loss: Option<f32>,
    /// Training throughput so far.
    pub tokens_per_s: f64,
}

/// The CSV header.
pub const CSV_HEADER: &str = "step,lr,train_loss,eval_loss,eval_ppl,tokens_per_s";

impl LogRow {
    /// The row as a CSV line (no newline).
    pub fn csv(&self) -> String {
        let (el, ep) = match self.eval_loss {
            Some(l) => (format!("{l:.5}"), format!("{:.3}", f64::from(l).exp())),
            None => (String::new(), String::new()),
        };
        format!(
            "{},{:.6e},{:.5},{el},{ep},{:.1}",
            self.step, self.lr, self.train_loss, self.tokens_per_s
        )
    }

    /// Parses a line written by [`LogRow::csv`].
    pub fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 {
            return None;
        }
        Some(LogRow {
            step: f[0].parse().ok()?,
            lr: f[1].parse().ok()?,
            train_loss: f[2].parse().ok()?,
            eval_loss: if f[3].is_empty() { None } else { Some(f[3].parse().ok()?) },
            tokens_per_s: f[5].parse().ok()?,
        })
    }
}

/// Reads a CSV log, keeping rows up to `max_step` (resume drops what came after the checkpoint).
pub fn read_csv(path: &Path, max_step: usize) -> Result<Vec<LogRow>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().filter_map(LogRow::parse).filter(|r| r.step <= max_step).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes the whole CSV log.
pub fn write_csv(path: &Path, rows: &[LogRow]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv());
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 40;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas { px: vec![255; W * H * 3] }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.set(x.round() as i64, y.round() as i64, c);
            self.set(x.round() as i64, y.round() as i64 + 1, c);
        }
    }
    /// Draws `text` (digits, '.', '-', 'e') at 2x scale with its top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str) {
        for (k, ch) in text.chars().enumerate() {
            let Some(g) = glyph(ch) else { continue };
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            let px = x + k as i64 * 8 + col * 2 + dx;
                            self.set(px, y + row as i64 * 2 + dy, [0, 0, 0]);
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// Renders the loss curve of `rows` as a PNG file.
pub fn write_png(path: &Path, rows: &[LogRow]) -> Result<()> {
    let mut c = Canvas::new();
    let (x0, y0, x1, y1) = (MARGIN as f64, (H - MARGIN) as f64, (W - 10) as f64, 10.0);
    c.line((x0, y0), (x1, y0), [0, 0, 0]);
    c.line((x0, y0), (x0, y1), [0, 0, 0]);
    if !rows.is_empty() {
        let max_step = rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
        let losses = rows.iter().flat_map(|r| [Some(r.train_loss), r.eval_loss]).flatten();
        let (lo, hi) = losses.fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = (f64::from(lo), f64::from(hi).max(f64::from(lo) + 1e-3));
        let at = |s: usize, l: f32| {
            (x0 + (x1 - x0) * s as f64 / max_step, y0 - (y0 - y1) * (f64::from(l) - lo) / (hi - lo))
        };
        for w in rows.windows(2) {
            c.line(at(w[0].step, w[0].train_loss), at(w[1].step, w[1].train_loss), [40, 90, 200]);
        }
        let evals: Vec<_> =
            rows.iter().filter_map(|r| r.eval_loss.map(|l| at(r.step, l))).collect();
        for w in evals.windows(2) {
            c.line(w[0], w[1], [210, 40, 40]);
        }
        c.text(2, y1 as i64, &format!("{hi:.2}"));
        c.text(2, y0 as i64 - 10, &format!("{lo:.2}"));
        c.text(x1 as i64 - 40, y0 as i64 + 8, &format!("{}", max_step as usize));
        c.text(x0 as i64, y0 as i64 + 8, "0");
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| Error::format("PNG", format!("{}: {e}", path.display()));
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(&c.px).map_err(png_err)?;
    w.finish().map_err(png_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_round_trip_and_png_is_written() {
        let rows: Vec<LogRow> = (1..=20)
            .map(|s| LogRow {
                step: s,
                lr: 1e-3,
                train_loss: 8.0 / s as f32,
                eval_loss: s.is_multiple_of(5).then_some(9.0 / s as f32),
                tokens_per_s: 1234.5,
            })
            .collect();
        let back: Vec<LogRow> = rows.iter().filter_map(|r| LogRow::parse(&r.csv())).collect();
        assert_eq!(back.len(), 20);
        assert_eq!(back[4].eval_loss, Some(1.8));
        let dir = std::env::temp_dir().join(format!("bitnet-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_csv(&dir.join("l.csv"), &rows).unwrap();
        assert_eq!(read_csv(&dir.join("l.csv"), 10).unwrap().len(), 10);
        write_png(&dir.join("l.png"), &rows).unwrap();
        let bytes = std::fs::read(dir.join("l.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(dir).ok();
    }
}
