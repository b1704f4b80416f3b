//! Named metrics: what a task declares once ([`MetricSpec`]: name,
//! direction, display format) and what an evaluation returns ([`Metrics`]:
//! values by name, in the declared order).

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether larger or smaller values of a metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Larger is better (accuracy, IoU).
    Maximise,
    /// Smaller is better (losses).
    Minimise,
}

/// A metric as a task declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// The column name in `metrics.csv` and the key everywhere else
    /// (`val_loss`, `val_acc`, `val_miou_thr`).
    pub name: String,
    /// What it measures, in words (for reports and plots).
    pub label: String,
    /// Which way is better.
    pub direction: Direction,
    /// Decimals shown in logs and reports.
    pub decimals: usize,
    /// Unit shown after the value (`""` or `"%"`).
    pub unit: String,
}

impl MetricSpec {
    /// A metric where smaller is better.
    pub fn minimise(name: &str, label: &str, decimals: usize) -> Self {
        Self::new(name, label, Direction::Minimise, decimals, "")
    }

    /// A metric where larger is better.
    pub fn maximise(name: &str, label: &str, decimals: usize) -> Self {
        Self::new(name, label, Direction::Maximise, decimals, "")
    }

    /// The same metric with a unit.
    pub fn with_unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_string();
        self
    }

    fn new(name: &str, label: &str, direction: Direction, decimals: usize, unit: &str) -> Self {
        Self {
            name: name.to_string(),
            label: label.to_string(),
            direction,
            decimals,
            unit: unit.to_string(),
        }
    }

    /// True when `new` is better than `old`.
    pub fn better(&self, new: f64, old: f64) -> bool {
        match self.direction {
            Direction::Maximise => new > old,
            Direction::Minimise => new < old,
        }
    }

    /// `value` as logs and reports show it (`58.02 %`, `1.0703`).
    pub fn format(&self, value: f64) -> String {
        let v = format!("{value:.*}", self.decimals);
        if self.unit.is_empty() {
            v
        } else {
            format!("{v} {}", self.unit)
        }
    }
}

/// Metric values by name, in the order they were added (a task's declared
/// order). Serialised as a JSON object.
///
/// ```
/// use pixclass_runs::Metrics;
/// let m = Metrics::new().with("val_loss", 1.07).with("val_acc", 58.0);
/// assert_eq!(m.get("val_acc"), Some(58.0));
/// assert_eq!(m.get("val_iou"), None);
/// assert_eq!(m.names().collect::<Vec<_>>(), ["val_loss", "val_acc"]);
/// let json = serde_json::to_string(&m).unwrap();
/// assert_eq!(json, r#"{"val_loss":1.07,"val_acc":58.0}"#);
/// assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `name`.
    pub fn with(mut self, name: &str, value: f64) -> Self {
        self.insert(name, value);
        self
    }

    /// Adds (or replaces) `name`.
    pub fn insert(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `name value` pairs formatted by their specs (for logs).
    pub fn summary(&self, specs: &[MetricSpec]) -> String {
        specs
            .iter()
            .filter_map(|s| {
                self.get(&s.name)
                    .map(|v| format!("{} {}", s.name, s.format(v)))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of metric values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Metrics, A::Error> {
                let mut m = Metrics::new();
                while let Some((k, v)) = a.next_entry::<String, f64>()? {
                    m.insert(&k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// One epoch of a run: a row of `metrics.csv`, an entry of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch (0: an evaluation before any training).
    pub epoch: usize,
    /// Mean of the epoch's batch losses (`None` for epoch 0).
    pub train_loss: Option<f64>,
    /// The validation metrics, by name.
    pub metrics: Metrics,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
}

impl EpochRecord {
    /// The value of metric `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name)
    }
}
