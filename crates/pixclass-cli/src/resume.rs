//! `--resume DIR` alone: a run continues with the settings saved in its
//! `config.json`. An option given explicitly on the command line must agree
//! with the saved one (the error names the option and both values); only
//! `--epochs` may change, and only upwards.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Which part of a saved configuration each option sets: (clap id, JSON
/// pointers into the configuration).
pub type OptionMap<'a> = &'a [(&'a str, &'a [&'a str])];

/// True when `id` was typed on the command line (not a default).
pub fn explicit(m: &ArgMatches, id: &str) -> bool {
    m.try_get_raw(id).is_ok() && m.value_source(id) == Some(ValueSource::CommandLine)
}

/// The saved configuration of the run in `dir`, checked against the options
/// the user gave explicitly (`wanted` holds what they ask for), with its
/// epoch count raised to `--epochs` when given. `epochs` is the JSON pointer
/// of the epoch count.
pub fn resumed<C: Serialize + DeserializeOwned>(
    dir: &Path,
    wanted: &C,
    m: &ArgMatches,
    map: OptionMap,
    epochs: &str,
) -> Result<C> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--resume {}: no run configuration there ({}); is it a pixclass run directory?",
            dir.display(),
            path.display()
        )
    })?;
    let mut saved: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let wanted = serde_json::to_value(wanted)?;
    let mut conflicts = Vec::new();
    for (id, pointers) in map {
        if !explicit(m, id) {
            continue;
        }
        for p in *pointers {
            let (a, b) = (saved.pointer(p), wanted.pointer(p));
            if a != b {
                conflicts.push(format!(
                    "--{} asks for {} but the run has {}",
                    id.replace('_', "-"),
                    b.map_or("nothing".into(), Value::to_string),
                    a.map_or("nothing".into(), Value::to_string)
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "--resume {}: {} (saved in {}). Leave those options out to continue with the run's settings, or start a new run",
            dir.display(),
            conflicts.join("; "),
            path.display()
        );
    }
    if explicit(m, "epochs") {
        let (had, want) = (
            saved.pointer(epochs).and_then(Value::as_u64).unwrap_or(0),
            wanted.pointer(epochs).and_then(Value::as_u64).unwrap_or(0),
        );
        if want < had {
            bail!("--resume {}: --epochs {want} is fewer than the run's {had}; a run can only be extended", dir.display());
        }
        if let Some(e) = saved.pointer_mut(epochs) {
            *e = Value::from(want);
        }
    }
    serde_json::from_value(saved).with_context(|| {
        format!(
            "{} does not hold this command's configuration",
            path.display()
        )
    })
}
