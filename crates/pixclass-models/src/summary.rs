//! Layer summaries: one row per layer with its parameters, output shape and
//! connections, recorded from a real forward pass of the model (so the table
//! cannot drift from the code).
//!
//! Connections count multiply-accumulates per image: a convolution output
//! reads `C_in/groups · k²` inputs (padded positions included); each input of
//! a transposed convolution feeds `C_out · k²` outputs; a max-pool output
//! reads `k²` inputs; upsampling, batch norm and ReLU outputs read one input;
//! a concatenation has none.

use candle_core::Tensor;
use serde::Serialize;

/// What kind of layer a row describes, with what its connection count needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerKind {
    /// Convolution with kernel `k` over `in_per_group` input channels.
    Conv {
        /// Kernel size.
        k: usize,
        /// Input channels per group.
        in_per_group: usize,
        /// Stride.
        stride: usize,
    },
    /// Transposed convolution with kernel `k` into `out_channels`.
    ConvTranspose {
        /// Kernel size.
        k: usize,
        /// Output channels.
        out_channels: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling over `k x k`.
    MaxPool {
        /// Window size.
        k: usize,
    },
    /// Nearest upsampling.
    Upsample {
        /// Scale factor.
        factor: usize,
    },
    /// Batch normalisation.
    BatchNorm,
    /// ReLU.
    Relu,
    /// Channel concatenation (a skip connection).
    Concat,
}

impl LayerKind {
    /// Short display name.
    pub fn label(&self) -> String {
        match self {
            LayerKind::Conv { k, stride, .. } => format!("Conv2d {k}x{k}/{stride}"),
            LayerKind::ConvTranspose { k, stride, .. } => {
                format!("ConvTranspose2d {k}x{k}/{stride}")
            }
            LayerKind::MaxPool { k } => format!("MaxPool2d {k}"),
            LayerKind::Upsample { factor } => format!("Upsample x{factor}"),
            LayerKind::BatchNorm => "BatchNorm2d".into(),
            LayerKind::Relu => "ReLU".into(),
            LayerKind::Concat => "Concat".into(),
        }
    }
}

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRow {
    /// Parameter path of the layer (`layer1.0`) or a description.
    pub name: String,
    /// Layer kind.
    pub kind: LayerKind,
    /// Trainable parameters.
    pub params: usize,
    /// Output shape per image `[C, H, W]`.
    pub output: [usize; 3],
    /// Connections (multiply-accumulates) per image.
    pub connections: usize,
}

/// A whole summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Model name.
    pub model: String,
    /// Input shape per image `[C, H, W]`.
    pub input: [usize; 3],
    /// Rows in forward order.
    pub rows: Vec<LayerRow>,
}

impl Summary {
    /// Total trainable parameters.
    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    /// Total output values of all layers.
    pub fn total_outputs(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.output.iter().product::<usize>())
            .sum()
    }

    /// Total connections.
    pub fn total_connections(&self) -> usize {
        self.rows.iter().map(|r| r.connections).sum()
    }

    /// A fixed-width text table with totals.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} — input {}x{}x{}\n{:<10} {:<24} {:>10} {:>14} {:>14}\n",
            self.model,
            self.input[0],
            self.input[1],
            self.input[2],
            "layer",
            "type",
            "params",
            "output",
            "connections"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<10} {:<24} {:>10} {:>14} {:>14}\n",
                r.name,
                r.kind.label(),
                r.params,
                format!("{}x{}x{}", r.output[0], r.output[1], r.output[2]),
                r.connections
            ));
        }
        s.push_str(&format!(
            "{:<10} {:<24} {:>10} {:>14} {:>14}\n",
            "total",
            "",
            self.total_params(),
            self.total_outputs(),
            self.total_connections()
        ));
        s
    }

    /// A markdown table with totals.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| layer | type | params | output | connections |\n|---|---|---:|---:|---:|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {}x{}x{} | {} |\n",
                r.name,
                r.kind.label(),
                r.params,
                r.output[0],
                r.output[1],
                r.output[2],
                r.connections
            ));
        }
        s.push_str(&format!(
            "| **total** | | **{}** | {} | **{}** |\n",
            self.total_params(),
            self.total_outputs(),
            self.total_connections()
        ));
        s
    }
}

/// Records rows during a traced forward pass.
#[derive(Debug, Default)]
pub struct Trace {
    rows: Vec<LayerRow>,
}

impl Trace {
    /// Records a layer from its input and output tensors (batch dim first).
    pub fn push(
        &mut self,
        name: &str,
        kind: LayerKind,
        params: usize,
        input: &Tensor,
        output: &Tensor,
    ) {
        let d = output.dims();
        let out = [d[1], d[2], d[3]];
        let out_elems: usize = out.iter().product();
        let in_elems: usize = input.dims()[1..].iter().product();
        let connections = match kind {
            LayerKind::Conv {
                k, in_per_group, ..
            } => out_elems * in_per_group * k * k,
            LayerKind::ConvTranspose {
                k, out_channels, ..
            } => in_elems * out_channels * k * k,
            LayerKind::MaxPool { k } => out_elems * k * k,
            LayerKind::Upsample { .. } | LayerKind::BatchNorm | LayerKind::Relu => out_elems,
            LayerKind::Concat => 0,
        };
        self.rows.push(LayerRow {
            name: name.to_string(),
            kind,
            params,
            output: out,
            connections,
        });
    }

    /// The finished summary.
    pub fn finish(self, model: &str, input: [usize; 3]) -> Summary {
        Summary {
            model: model.to_string(),
            input,
            rows: self.rows,
        }
    }
}
