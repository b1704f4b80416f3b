//! Reading and writing users' pictures safely: a truncated or corrupt image
//! is an error naming the file (decoders would otherwise fill in what is
//! missing), and an output never replaces an input or takes a format other
//! than PNG.

use std::path::Path;

use image::DynamicImage;

use crate::error::{DataError, Result};

/// True when JPEG `bytes` end their last scan with an end-of-image marker.
/// A JPEG cut short ends inside its entropy-coded data, where `FF D9`
/// cannot occur (a `FF` there is always followed by `00`), so the last
/// start-of-scan (`FF DA`) must be followed by `FF D9`; a thumbnail's own
/// end marker (in the EXIF block, before the main scan) does not count.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes an image (PNG, JPEG, BMP, WebP), refusing truncated JPEGs.
/// `name` names the file in errors.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        return Err(DataError::Invalid(format!(
            "{name}: the JPEG is truncated or corrupt (its image data does not end with an end-of-image marker)"
        )));
    }
    image::load_from_memory(bytes)
        .map_err(|e| DataError::Invalid(format!("{name}: cannot decode image: {e}")))
}

/// Reads and decodes the image at `path` ([`decode_image`]).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, &path.display().to_string())
}

/// An output picture must be a `.png` path and must not be any of
/// `inputs` (the same file under another name included).
pub fn check_png_output(output: &Path, inputs: &[&Path]) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    if let Some(i) = inputs.iter().find(|i| same(output, i)) {
        return Err(DataError::Invalid(format!(
            "--output {} is the input {}: refusing to overwrite an input",
            output.display(),
            i.display()
        )));
    }
    let is_png = output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(DataError::Invalid(format!(
            "--output {}: the output is a PNG picture; give it a .png name",
            output.display()
        )));
    }
    Ok(())
}
