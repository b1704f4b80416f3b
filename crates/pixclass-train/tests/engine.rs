//! The training engine: Adam against PyTorch, non-finite losses, best
//! checkpoints and resume, on small tasks with known answers.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use pixclass_runs::{MetricSpec, Metrics, RunRecord};
use pixclass_train::adam::{Adam, AdamConfig};
use pixclass_train::checkpoint;
use pixclass_train::engine::{fit, FitConfig, TrainTask};
use pixclass_train::TrainError;

#[test]
fn adam_matches_torch() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/adam.json"),
    )
    .unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vec = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let p =
        Var::from_tensor(&Tensor::new(vec(&g["init"]).as_slice(), &Device::Cpu).unwrap()).unwrap();
    let target = Tensor::new(vec(&g["target"]).as_slice(), &Device::Cpu).unwrap();
    let mut adam = Adam::new(
        vec![("p".into(), p.clone())],
        AdamConfig {
            lr: g["lr"].as_f64().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    for expected in g["history"].as_array().unwrap() {
        let loss = p
            .as_tensor()
            .sub(&target)
            .unwrap()
            .powf(3.0)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        adam.step(&loss.backward().unwrap()).unwrap();
        let got: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        for (a, b) in got.iter().zip(vec(expected)) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {expected:?}");
        }
    }
    assert_eq!(adam.steps(), 5);
}

/// Fits w to 3 with loss (w-3)^2; optionally returns NaN at a given step.
struct Toy {
    w: Var,
    nan_at: Option<(usize, usize)>,
}

impl TrainTask for Toy {
    fn metrics(&self) -> Vec<MetricSpec> {
        vec![
            MetricSpec::minimise("val_loss", "validation loss", 4),
            MetricSpec::maximise("w", "the weight", 4),
        ]
    }
    fn num_train_batches(&self) -> usize {
        4
    }
    fn train_loss(&mut self, epoch: usize, batch: usize) -> pixclass_train::Result<Tensor> {
        let l = (self.w.as_tensor() - 3.0)?.sqr()?.sum_all()?;
        if self.nan_at == Some((epoch, batch)) {
            return Ok((l * f64::NAN)?);
        }
        Ok(l)
    }
    fn evaluate(&mut self) -> pixclass_train::Result<Metrics> {
        let w = self.w.as_tensor().sum_all()?.to_scalar::<f32>()? as f64;
        Ok(Metrics::new()
            .with("val_loss", (w - 3.0).powi(2))
            .with("w", w))
    }
}

fn toy(nan_at: Option<(usize, usize)>) -> (VarMap, Toy, Vec<(String, Var)>) {
    let vm = VarMap::new();
    let w = vm
        .get(
            1,
            "w",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    let var = vm.data().lock().unwrap()["w"].clone();
    let _ = w;
    (
        vm,
        Toy {
            w: var.clone(),
            nan_at,
        },
        vec![("w".into(), var)],
    )
}

fn cfg(dir: &Path, epochs: usize, resume: bool) -> FitConfig {
    FitConfig {
        epochs,
        adam: AdamConfig {
            lr: 0.1,
            ..Default::default()
        },
        out_dir: dir.to_path_buf(),
        resume,
        best: Some("val_loss".into()),
        progress: false,
        eval_first: false,
        warmup_steps: 0,
        schedule: Default::default(),
        record: RunRecord::new(
            "toy",
            "toy",
            serde_json::json!({}),
            Default::default(),
            vec![],
        ),
    }
}

#[test]
fn loss_falls_and_outputs_appear() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let record = fit(&mut task, &vm, vars, &cfg(dir.path(), 5, false)).unwrap();
    let rows = &record.epochs;
    assert_eq!(rows.len(), 5);
    assert!(rows[4].get("val_loss") < rows[0].get("val_loss"));
    // The record names the best epoch by the declared direction (minimise).
    let best = record.best.as_ref().unwrap();
    assert_eq!(best.metric, "val_loss");
    assert_eq!(
        Some(best.value),
        rows.iter()
            .filter_map(|r| r.get("val_loss"))
            .reduce(f64::min)
    );
    assert_eq!(RunRecord::read(dir.path()).unwrap(), record);
    // metrics.csv reads back by column name, bit for bit.
    assert_eq!(
        pixclass_runs::csv_file::read(&dir.path().join("metrics.csv"))
            .unwrap()
            .iter()
            .map(|r| r.metrics.clone())
            .collect::<Vec<_>>(),
        rows.iter().map(|r| r.metrics.clone()).collect::<Vec<_>>()
    );
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,train_loss,val_loss,w,seconds\n"));
    assert_eq!(csv.lines().count(), 6);
    for f in ["curves.png", "checkpoint.safetensors", "best.safetensors"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let png = image::open(dir.path().join("curves.png")).unwrap();
    assert!(png.width() > 500 && png.height() > 300);
}

#[test]
fn non_finite_loss_names_epoch_and_step_and_keeps_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Batch index 1 of epoch 3: the second step (steps count from 1, like epochs).
    let (vm, mut task, vars) = toy(Some((3, 1)));
    let err = fit(&mut task, &vm, vars, &cfg(dir.path(), 5, false)).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                epoch: 3,
                step: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("epoch 3, step 2"), "{err}");
    let ck = checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.state.epoch, 2, "the epoch-2 checkpoint is the latest");
    assert_eq!(ck.state.rows.len(), 2);
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let a = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let full = fit(&mut task, &vm, vars, &cfg(a.path(), 6, false)).unwrap();
    let w_full: Vec<f32> = task.w.as_tensor().to_vec1().unwrap();

    let b = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    fit(&mut task, &vm, vars, &cfg(b.path(), 2, false)).unwrap();
    // A fresh process: new variables, restored from the checkpoint.
    let (vm, mut task, vars) = toy(None);
    let resumed = fit(&mut task, &vm, vars, &cfg(b.path(), 6, true)).unwrap();
    let w_resumed: Vec<f32> = task.w.as_tensor().to_vec1().unwrap();
    assert_eq!(w_full, w_resumed);
    let strip = |r: &RunRecord| {
        r.epochs
            .iter()
            .map(|r| (r.epoch, r.train_loss, r.metrics.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&full), strip(&resumed));
    // The resumed run's metrics.csv is byte-identical to the uninterrupted one's
    // but for the wall-time column.
    let no_time = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(no_time(a.path()), no_time(b.path()));
    // A resume with a missing checkpoint is a clear error.
    let c = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let err = fit(&mut task, &vm, vars, &cfg(c.path(), 2, true)).unwrap_err();
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn corrupt_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("checkpoint.safetensors");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let err = checkpoint::load(&p).err().unwrap();
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn eval_first_records_the_start_as_epoch_zero_and_resumes_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let mut c = cfg(dir.path(), 3, false);
    c.eval_first = true;
    let record = fit(&mut task, &vm, vars, &c).unwrap();
    let epochs: Vec<usize> = record.epochs.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, [0, 1, 2, 3]);
    let start = &record.epochs[0];
    // Before any step: w = 0, so val_loss = (0 - 3)^2, and no training loss.
    assert_eq!(start.train_loss, None);
    assert_eq!(start.get("w"), Some(0.0));
    assert_eq!(start.get("val_loss"), Some(9.0));
    let csv = pixclass_runs::csv_file::read(&dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.len(), 4);
    assert_eq!(csv[0].epoch, 0);
    assert_eq!(csv[0].train_loss, None);

    // A run stopped after epoch 0 resumes at epoch 1 from its checkpoint and
    // keeps the saved epoch 0 once.
    let b = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let mut first = cfg(b.path(), 0, false);
    first.eval_first = true;
    fit(&mut task, &vm, vars, &first).unwrap();
    assert_eq!(
        checkpoint::load(&b.path().join("checkpoint.safetensors"))
            .unwrap()
            .state
            .epoch,
        0
    );
    let (vm, mut task, vars) = toy(None);
    let mut rest = cfg(b.path(), 3, true);
    rest.eval_first = true;
    let resumed = fit(&mut task, &vm, vars, &rest).unwrap();
    let strip = |r: &RunRecord| {
        r.epochs
            .iter()
            .map(|r| (r.epoch, r.train_loss, r.metrics.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&resumed), strip(&record));
}

/// The toy task as a later version would declare it: one more metric.
struct Grown(Toy);

impl TrainTask for Grown {
    fn metrics(&self) -> Vec<MetricSpec> {
        let mut m = self.0.metrics();
        m.push(MetricSpec::minimise("w_gap", "distance to 3", 4));
        m
    }
    fn num_train_batches(&self) -> usize {
        self.0.num_train_batches()
    }
    fn train_loss(&mut self, epoch: usize, batch: usize) -> pixclass_train::Result<Tensor> {
        self.0.train_loss(epoch, batch)
    }
    fn evaluate(&mut self) -> pixclass_train::Result<Metrics> {
        let m = self.0.evaluate()?;
        let gap = (m.get("w").unwrap() - 3.0).abs();
        Ok(m.with("w_gap", gap))
    }
}

#[test]
fn a_finished_run_with_fewer_metrics_is_reused_and_an_unfinished_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, mut task, vars) = toy(None);
    let old = fit(&mut task, &vm, vars, &cfg(dir.path(), 3, false)).unwrap();
    let csv_before = std::fs::read(dir.path().join("metrics.csv")).unwrap();

    // Finished: reused as recorded, with the metrics it has.
    let (vm, task, vars) = toy(None);
    let mut grown = Grown(task);
    let reused = fit(&mut grown, &vm, vars, &cfg(dir.path(), 3, true)).unwrap();
    assert_eq!(reused.epochs, old.epochs);
    let names: Vec<&str> = reused.metrics.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["val_loss", "w"]);
    assert_eq!(reused.best, old.best);
    assert_eq!(
        std::fs::read(dir.path().join("metrics.csv")).unwrap(),
        csv_before
    );

    // Extended: the new rows would lack the old ones' columns, so it is refused.
    let (vm, task, vars) = toy(None);
    let mut grown = Grown(task);
    let err = fit(&mut grown, &vm, vars, &cfg(dir.path(), 5, true)).unwrap_err();
    assert!(
        err.to_string().contains("--overwrite") && err.to_string().contains("w_gap"),
        "{err}"
    );
    // ... and the refusal leaves the finished run's record as it was.
    let kept = RunRecord::read(dir.path()).unwrap();
    assert_eq!(kept.status, pixclass_runs::RunStatus::Finished);
    assert_eq!(kept.epochs, old.epochs);
}
