//! Request-path preprocessing: photo bytes to the normalised tensor a model expects, with the
//! same decoding checks and evaluation transform as `bestiary eval`.

use std::io::Cursor;

use bestiary_dataset::LoaderConfig;
use bestiary_dataset::decode::{self, DecodeLimits};
use bestiary_dataset::loader::downsize;
use bestiary_dataset::transform::center_crop_into;
use bestiary_model::InputSpec;
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use jpeg_decoder::PixelFormat;

use crate::error::EngineError;

/// What was read from a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Width of the photo as displayed (after its EXIF orientation), before any resizing.
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// The format detected from the content.
    pub format: ImageFormat,
    /// 1, or 2, 4 or 8 when a large JPEG was decoded at that fraction of its size.
    pub decode_scale: u32,
}

/// Turns photo bytes into the model's input tensor.
///
/// The transform is the evaluation transform of training: the photo is shrunk so its shorter
/// side is the loader's cache side (1.25 × the input size) when it is larger, then
/// [`center_crop_into`] resizes, centre-crops and normalises it, so a photo gets the same
/// tensor (and prediction) here as in `bestiary eval`. JPEGs much larger than needed are
/// decoded at 1/2, 1/4 or 1/8 scale in the DCT domain first, which skips most of the decoding
/// and resizing work; see [`Preprocessor::jpeg_scale`].
#[derive(Debug, Clone)]
pub struct Preprocessor {
    input: InputSpec,
    limits: DecodeLimits,
    /// The shorter side photos are first shrunk to, as the training loader does.
    resize_target: u32,
    jpeg_downscale: bool,
}

impl Preprocessor {
    pub fn new(input: InputSpec, limits: DecodeLimits) -> Self {
        // The loader's own definition, so the two can never drift apart.
        let resize_target = LoaderConfig::new(input.image_size, 1).cache_side();
        Self {
            input,
            limits,
            resize_target,
            jpeg_downscale: true,
        }
    }

    /// Turns DCT downscaling of large JPEGs on (the default) or off; off, every photo is
    /// decoded at full size exactly as training's loader does.
    #[must_use]
    pub fn with_jpeg_downscale(mut self, enabled: bool) -> Self {
        self.jpeg_downscale = enabled;
        self
    }

    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Floats per image: `3 × size × size`.
    pub fn input_len(&self) -> usize {
        let side = self.input.image_size as usize;
        3 * side * side
    }

    /// The shorter side photos are shrunk to before the centre crop.
    pub fn resize_target(&self) -> u32 {
        self.resize_target
    }

    /// The JPEG decoding scale denominator for a photo of `width` × `height`: the largest of
    /// 8, 4 and 2 that keeps the shorter side at least twice [`Self::resize_target`], so the
    /// final resampling (not the DCT's coarser filter) still decides the result; 1 when the
    /// photo is not that large.
    pub fn jpeg_scale(&self, width: u32, height: u32) -> u32 {
        let shorter = width.min(height);
        let keep = self.resize_target.saturating_mul(2);
        [8, 4, 2]
            .into_iter()
            .find(|&scale| shorter / scale >= keep)
            .unwrap_or(1)
    }

    /// Decodes `bytes` and writes the normalised `3 × size × size` tensor into `out`.
    ///
    /// # Errors
    /// [`EngineError::Decode`] for empty, truncated, corrupt, unsupported or too large photos
    /// (the checks of `bestiary_dataset::decode`); [`EngineError::InputShape`] when `out` does
    /// not hold one image; [`EngineError::InvalidModel`] for an unusable crop fraction.
    pub fn preprocess(&self, bytes: &[u8], out: &mut [f32]) -> Result<ImageInfo, EngineError> {
        self.check_output(out)?;
        let (image, info) = self.decode(bytes)?;
        self.preprocess_image(image, out)?;
        Ok(info)
    }

    /// Decodes `bytes` into the upright photo that [`Preprocessor::preprocess`] transforms:
    /// a large JPEG comes at the fraction of its size given by [`Preprocessor::jpeg_scale`]
    /// (see [`ImageInfo::decode_scale`]), anything else at full size.
    ///
    /// # Errors
    /// [`EngineError::Decode`] as for [`Preprocessor::preprocess`].
    pub fn decode(&self, bytes: &[u8]) -> Result<(RgbImage, ImageInfo), EngineError> {
        let (width, height, format) = decode::dimensions(bytes)?;
        let within_limits = u64::from(width) * u64::from(height) <= self.limits.max_pixels;
        if self.jpeg_downscale && format == ImageFormat::Jpeg && within_limits {
            let scale = self.jpeg_scale(width, height);
            // Any trouble on the fast path (an unusual JPEG, or a broken one) goes to the full
            // decoder, which then gives the authoritative image or error.
            // jpeg-decoder is a second parser of untrusted bytes: should it panic, the request
            // thread survives and the full decoder gives the verdict instead.
            let scaled = || {
                std::panic::catch_unwind(|| decode_jpeg_scaled(bytes, scale, &self.limits))
                    .ok()
                    .flatten()
            };
            if scale > 1
                && let Some(image) = scaled()
            {
                let info = ImageInfo {
                    width,
                    height,
                    format,
                    decode_scale: scale,
                };
                return Ok((image, info));
            }
        }
        let decoded = decode::decode(bytes, &self.limits)?;
        let info = ImageInfo {
            width: decoded.width,
            height: decoded.height,
            format: decoded.format,
            decode_scale: 1,
        };
        Ok((decoded.image, info))
    }

    /// The evaluation transform of an already decoded, upright photo into `out`.
    ///
    /// # Errors
    /// [`EngineError::InputShape`] when `out` does not hold one image,
    /// [`EngineError::InvalidModel`] for an unusable crop fraction, and
    /// [`EngineError::Decode`] for an image without pixels.
    pub fn preprocess_image(&self, image: RgbImage, out: &mut [f32]) -> Result<(), EngineError> {
        self.check_output(out)?;
        let crop = self.input.crop_fraction;
        if !(crop > 0.0 && crop <= 1.0) || self.input.image_size == 0 {
            return Err(EngineError::InvalidModel {
                model: "model.json".to_owned(),
                reason: format!(
                    "input size {} and crop fraction {crop} cannot be used",
                    self.input.image_size
                ),
            });
        }
        if image.width() == 0 || image.height() == 0 {
            return Err(decode::DecodeError::Corrupt("image has no pixels".to_owned()).into());
        }
        let image = downsize(image, self.resize_target);
        center_crop_into(
            &image,
            self.input.image_size,
            crop,
            &self.input.normalization,
            out,
        );
        Ok(())
    }

    fn check_output(&self, out: &[f32]) -> Result<(), EngineError> {
        let per_image = self.input_len();
        if out.len() == per_image {
            Ok(())
        } else {
            Err(EngineError::InputShape {
                got: out.len(),
                expected: per_image,
                batch: 1,
                per_image,
            })
        }
    }
}

/// Decodes a baseline or progressive RGB or greyscale JPEG at `1/scale` of its size (rounded
/// up), upright according to its EXIF orientation; `None` for anything else (CMYK, 16-bit, a
/// decoding error), which the caller hands to the full decoder.
fn decode_jpeg_scaled(bytes: &[u8], scale: u32, limits: &DecodeLimits) -> Option<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc_bytes).ok()?);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8) {
        return None;
    }
    let requested = |side: u16| u16::try_from(u32::from(side).div_ceil(scale)).ok();
    let (width, height) = decoder
        .scale(requested(info.width)?, requested(info.height)?)
        .ok()?;
    let pixels = decoder.decode().ok()?;
    let (width, height) = (u32::from(width), u32::from(height));
    let image = match info.pixel_format {
        PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels)?),
        _ => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels)?),
    };
    // A broken or absurd orientation tag is ignored, as the full decoder does.
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let mut image = image;
    image.apply_orientation(orientation);
    Some(image.into_rgb8())
}
