//! `metrics.csv`: one row per epoch, columns `epoch, train_loss, <the task's
//! metrics in declared order>, seconds`. Values are written in Rust's
//! shortest round-trip form, so a value reads back bit for bit; rows are
//! only ever appended (a resumed run adds its rows under the ones already
//! there, which stay byte-identical).

use std::io::Write;
use std::path::Path;

use crate::error::{Result, RunError};
use crate::metrics::{EpochRecord, MetricSpec, Metrics};

/// The header of a `metrics.csv` for `specs`.
pub fn header(specs: &[MetricSpec]) -> Vec<String> {
    let mut h = vec!["epoch".to_string(), "train_loss".to_string()];
    h.extend(specs.iter().map(|s| s.name.clone()));
    h.push("seconds".to_string());
    h
}

/// The cells of one row.
fn cells(specs: &[MetricSpec], r: &EpochRecord) -> Result<Vec<String>> {
    let mut c = vec![
        r.epoch.to_string(),
        r.train_loss.map(|v| v.to_string()).unwrap_or_default(),
    ];
    for s in specs {
        let v = r.metrics.get(&s.name).ok_or_else(|| RunError::Invalid {
            reason: format!("epoch {} has no value for metric {}", r.epoch, s.name),
        })?;
        c.push(v.to_string());
    }
    c.push(format!("{:.3}", r.seconds));
    Ok(c)
}

fn csv_text(rows: &[Vec<String>]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    for r in rows {
        w.write_record(r).map_err(|e| RunError::Invalid {
            reason: e.to_string(),
        })?;
    }
    w.into_inner().map_err(|e| RunError::Invalid {
        reason: e.to_string(),
    })
}

/// Brings `path` up to date with `rows` (every epoch so far): a missing file
/// is written whole; an existing one must hold the same header and a prefix
/// of `rows` (what an interrupted run of the same task wrote), and the
/// missing rows are appended. Rows already in the file are never rewritten.
pub fn sync(path: &Path, specs: &[MetricSpec], rows: &[EpochRecord]) -> Result<()> {
    let head = header(specs);
    let all: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cells(specs, r))
        .collect::<Result<_>>()?;
    let existing = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(RunError::io(path, e)),
    };
    let Some(existing) = existing else {
        let mut text = vec![head];
        text.extend(all);
        return crate::atomic::write_atomic(path, &csv_text(&text)?);
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(existing.as_slice());
    let mut have = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| RunError::bad(path, e.to_string()))?;
        have.push(rec.iter().map(String::from).collect::<Vec<_>>());
    }
    if have.first() != Some(&head) {
        return Err(RunError::bad(
            path,
            format!("its columns {:?} are not this run's {head:?}", have.first()),
        ));
    }
    let written = &have[1..];
    if written.len() > all.len() || written != &all[..written.len()] {
        return Err(RunError::bad(
            path,
            "its rows are not the ones of this run's checkpoint".into(),
        ));
    }
    let new = &all[written.len()..];
    if new.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| RunError::io(path, e))?;
    f.write_all(&csv_text(new)?)
        .and_then(|()| f.sync_all())
        .map_err(|e| RunError::io(path, e))
}

/// Reads a `metrics.csv` by column name: every column between `train_loss`
/// and `seconds` is a metric.
pub fn read(path: &Path) -> Result<Vec<EpochRecord>> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| RunError::bad(path, e.to_string()))?;
    let head: Vec<String> = reader
        .headers()
        .map_err(|e| RunError::bad(path, e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .ok_or_else(|| RunError::bad(path, format!("no column {name}")))
    };
    let (ie, it, is) = (col("epoch")?, col("train_loss")?, col("seconds")?);
    let num = |s: &str| -> Result<f64> {
        s.parse::<f64>()
            .map_err(|_| RunError::bad(path, format!("{s:?} is not a number")))
    };
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| RunError::bad(path, e.to_string()))?;
        let cell = |i: usize| rec.get(i).unwrap_or("");
        let mut metrics = Metrics::new();
        for (i, name) in head.iter().enumerate() {
            if i != ie && i != it && i != is {
                metrics.insert(name, num(cell(i))?);
            }
        }
        rows.push(EpochRecord {
            epoch: cell(ie)
                .parse()
                .map_err(|_| RunError::bad(path, format!("bad epoch {:?}", cell(ie))))?,
            train_loss: match cell(it) {
                "" => None,
                s => Some(num(s)?),
            },
            metrics,
            seconds: num(cell(is))?,
        });
    }
    Ok(rows)
}
