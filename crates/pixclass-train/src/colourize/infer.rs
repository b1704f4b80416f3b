//! A trained colourization run loaded for use: evaluation (in
//! `crate::colourize::evaluate_split`) and colourizing photos of any size.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use pixclass_models::init::seeded_var_builder;
use pixclass_models::ColourNet;

use super::decode::{ClassPrior, Decoding};
use super::task::{grey_tiles, to_rgb_tiles, CLASS_PRIOR_JSON};
use super::{palette_for, ColourTrainConfig};
use crate::checkpoint;
use crate::device::{select_device, DeviceKind};
use crate::error::{Result, TrainError};
use crate::plot::{save_png, tile_grid};
use crate::run_dir::read_json;

/// A trained net loaded from a run directory.
pub struct LoadedColouriser {
    /// The run's configuration.
    pub config: ColourTrainConfig,
    /// The net with its trained weights.
    pub net: ColourNet,
    /// The device it lives on.
    pub device: Device,
    /// The colour prior its training fitted (`class_prior.json`; `None`
    /// for runs written before that file existed: `colourize eval` then
    /// computes it from the training split).
    pub prior: Option<ClassPrior>,
}

/// Loads a run directory's weights onto `device`: the best epoch's when the
/// run kept it (`keep_best`), else the latest.
pub fn load_colouriser(dir: &Path, device: DeviceKind) -> Result<LoadedColouriser> {
    let config: ColourTrainConfig = read_json(&dir.join("config.json"))?;
    let device = select_device(device, 0)?;
    let best = dir.join(checkpoint::BEST);
    let path = if config.extras.keep_best && best.is_file() {
        best
    } else {
        dir.join(checkpoint::LATEST)
    };
    let loaded = checkpoint::load(&path)?;
    let varmap = VarMap::new();
    let net = ColourNet::new(
        config.model,
        seeded_var_builder(&varmap, 0, DType::F32, &device),
    )?;
    checkpoint::restore_vars(&varmap, &loaded.model, &path)?;
    let prior_path = dir.join(CLASS_PRIOR_JSON);
    let prior = if prior_path.is_file() {
        Some(read_json(&prior_path)?)
    } else {
        None
    };
    Ok(LoadedColouriser {
        config,
        net,
        device,
        prior,
    })
}

/// Colourizes a photo of any size: grey = mean of R, G, B (1/256 scale),
/// cropped to a multiple of 4 (and first downscaled so its longer side is at
/// most `max_side`); writes grey input and result (decoded by `decoding`)
/// side by side.
pub fn colourize_image(
    model: &LoadedColouriser,
    input: &Path,
    output: &Path,
    max_side: u32,
    decoding: &Decoding,
) -> Result<(u32, u32)> {
    decoding.validate()?;
    let bad = |r: String| TrainError::Plot {
        path: input.to_path_buf(),
        reason: r,
    };
    crate::run_dir::in_range("--max-side", max_side, 4, 4096)?;
    pixclass_data::image_io::check_png_output(output, &[input])?;
    let img = pixclass_data::image_io::open_image(input)?.to_rgb8();
    let img = if img.width().max(img.height()) > max_side {
        let s = max_side as f64 / img.width().max(img.height()) as f64;
        let (w, h) = (
            ((img.width() as f64 * s).round() as u32).max(4),
            ((img.height() as f64 * s).round() as u32).max(4),
        );
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let (w, h) = (img.width() / 4 * 4, img.height() / 4 * 4);
    if w == 0 || h == 0 {
        return Err(bad(format!(
            "image is {}x{}; at least 4x4 pixels are needed",
            img.width(),
            img.height()
        )));
    }
    let mut grey = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel(x, y);
            grey.push(pixclass_data::colourize::grey_of(p[0], p[1], p[2]));
        }
    }
    let nic = model.config.model.in_channels;
    if nic != 1 {
        return Err(TrainError::Config(format!(
            "the model takes {nic} input channels; colourizing needs a grey (1-channel) model"
        )));
    }
    let x = Tensor::from_vec(grey, (1, 1, h as usize, w as usize), &model.device)?;
    let logits = model.net.forward_t(&x, false)?;
    let palette = palette_for(&model.config.model)?;
    let rgb = decoding
        .decode(&logits, &palette, model.prior.as_ref())?
        .to_device(&Device::Cpu)?;
    let tiles = vec![vec![
        grey_tiles(&x)?.remove(0),
        to_rgb_tiles(&rgb)?.remove(0),
    ]];
    save_png(&tile_grid(&tiles, 1, 4), output)?;
    Ok((w, h))
}
