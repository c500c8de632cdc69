//! Turns RGB images into normalised CHW `f32` tensors, for evaluation and seeded augmentation.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{CropBox, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Per-channel normalisation in 0..255 pixel units: `value = (pixel - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics used by torchvision and timm models.
    pub fn imagenet() -> Self {
        Self {
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        }
    }

    /// EfficientNet-Lite's roughly symmetric `[-1, 1]` input range.
    pub fn efficientnet_lite() -> Self {
        Self {
            mean: [127.0; 3],
            std: [128.0; 3],
        }
    }

    /// Plain `[0, 1]` scaling.
    pub fn unit() -> Self {
        Self {
            mean: [0.0; 3],
            std: [255.0; 3],
        }
    }

    /// `(scale, offset)` with `value = pixel * scale + offset`, so the per-pixel loop multiplies
    /// instead of dividing.
    fn affine(&self) -> ([f32; 3], [f32; 3]) {
        let scale = self.std.map(|std| 1.0 / std);
        let offset = [0, 1, 2].map(|channel| -self.mean[channel] * scale[channel]);
        (scale, offset)
    }
}

/// How a training crop is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum CropMode {
    /// torchvision's `RandomResizedCrop`, drawn from `scale` and `ratio`.
    #[default]
    RandomResized,
    /// The evaluation crop (`crop_fraction` of the shorter side, centred) moved by a whole
    /// number of pixels, up to `max_shift` of its side each way, and kept inside the photo: the
    /// translation of fast CIFAR-10 recipes, which shows the network the scale it meets at test
    /// time instead of zooming in on a quarter of the photo.
    Shift { crop_fraction: f32, max_shift: f32 },
}

/// Training augmentation parameters, following torchvision's `RandomResizedCrop` (or a shifted
/// evaluation crop), `RandomHorizontalFlip` and `ColorJitter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    #[serde(default)]
    pub crop: CropMode,
    /// Range of the crop's area as a fraction of the image area (`CropMode::RandomResized`).
    pub scale: (f32, f32),
    /// Range of the crop's width/height aspect ratio, sampled log-uniformly
    /// (`CropMode::RandomResized`).
    pub ratio: (f32, f32),
    /// Mirror left-right with probability 0.5.
    pub horizontal_flip: bool,
    /// Jitter strength `x`: a brightness factor is drawn uniformly from `[max(0, 1 - x), 1 + x]`;
    /// 0 disables it.
    pub brightness: f32,
    /// Contrast jitter strength, as for `brightness`.
    pub contrast: f32,
    /// Saturation jitter strength, as for `brightness`.
    pub saturation: f32,
}

impl AugmentConfig {
    /// Flip and translate only (`--recipe fast`): the evaluation crop of `crop_fraction`,
    /// shifted by up to an eighth of its side, mirrored half the time, colours untouched.
    pub fn flip_shift(crop_fraction: f32) -> Self {
        Self {
            crop: CropMode::Shift {
                crop_fraction,
                max_shift: 0.125,
            },
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            ..Self::default()
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop: CropMode::RandomResized,
            scale: (0.25, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            horizontal_flip: true,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
        }
    }
}

/// Resizes so the shorter side becomes `side`, keeping the aspect ratio.
///
/// # Panics
/// If `side` is 0 or the image is empty.
#[must_use]
pub fn resize_shorter_side(image: &RgbImage, side: u32) -> RgbImage {
    assert!(side > 0, "the shorter side must be at least one pixel");
    assert_not_empty(image);
    let (width, height) = image.dimensions();
    let (width, height) = if width <= height {
        (side, scale_longer_side(height, width, side))
    } else {
        (scale_longer_side(width, height, side), side)
    };
    resize_exact(image, width, height)
}

/// Resizes to exactly `width`×`height`, ignoring the aspect ratio.
///
/// # Panics
/// If the image is empty.
#[must_use]
pub fn resize_exact(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert_not_empty(image);
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    let mut resized = RgbImage::new(width, height);
    with_scratch(|scratch| {
        resize_region(
            &mut scratch.resizer,
            image,
            whole_image(image),
            (width, height),
            &mut resized,
        );
    });
    resized
}

/// Evaluation transform: resize so the shorter side is `round(size / crop_fraction)`, take the
/// centred `size`×`size` square and write it normalised, channel-major, into `out`.
///
/// The crop is mapped back to source coordinates so cropping and resizing happen in one
/// resampling pass.
///
/// # Panics
/// If `size` is 0, `crop_fraction` is not in `(0, 1]`, `out.len() != 3 * size * size`, or the
/// image is empty.
pub fn center_crop_into(
    image: &RgbImage,
    size: u32,
    crop_fraction: f32,
    norm: &Normalization,
    out: &mut [f32],
) {
    assert!(
        crop_fraction > 0.0 && crop_fraction <= 1.0,
        "crop_fraction must be in (0, 1], got {crop_fraction}"
    );
    assert!(size > 0, "the crop size must be at least one pixel");
    assert_tensor_len(out, size, size);
    assert_not_empty(image);
    let region = center_region(image.dimensions(), size, crop_fraction);
    with_scratch(|Scratch { resizer, pixels }| {
        let pixels = sized_buffer(pixels, size, size);
        resize_region(resizer, image, region, (size, size), pixels);
        write_chw(pixels, size, false, out, normalizer(norm));
    });
}

/// Where the evaluation crop lies in an image of `dimensions`: `[left, top, width, height]` in
/// its pixels, when the image is first shrunk so its shorter side is `shorter_side` (only when
/// larger, as the loader's `downsize` does) and then given to [`center_crop_into`] with `size`
/// and `crop_fraction`. Lets a picture drawn from the network's input be laid over the photo.
pub fn evaluation_crop(
    (width, height): (u32, u32),
    shorter_side: u32,
    size: u32,
    crop_fraction: f32,
) -> [f64; 4] {
    let shrunk = if width.min(height) > shorter_side && shorter_side > 0 {
        if width <= height {
            (shorter_side, scale_longer_side(height, width, shorter_side))
        } else {
            (scale_longer_side(width, height, shorter_side), shorter_side)
        }
    } else {
        (width, height)
    };
    let region = center_region(shrunk, size, crop_fraction);
    // The shrinking maps the whole image onto the whole shrunk one, axis by axis.
    let sx = f64::from(width) / f64::from(shrunk.0.max(1));
    let sy = f64::from(height) / f64::from(shrunk.1.max(1));
    [
        region.left * sx,
        region.top * sy,
        region.width * sx,
        region.height * sy,
    ]
}

/// Training transform: random resized crop, horizontal flip, colour jitter and normalisation,
/// written channel-major into `out`.
///
/// The same `rng` state always gives bit-identical output. The crop follows torchvision's
/// `RandomResizedCrop` (10 attempts, then a centre crop clamped to `config.ratio`); brightness,
/// contrast and saturation are applied in that fixed order, fused with normalisation into a
/// single pass over the crop.
///
/// # Panics
/// If `size` is 0, `out.len() != 3 * size * size`, or the image is empty.
pub fn augment_into(
    image: &RgbImage,
    size: u32,
    config: &AugmentConfig,
    rng: &mut impl Rng,
    norm: &Normalization,
    out: &mut [f32],
) {
    assert!(size > 0, "the crop size must be at least one pixel");
    assert_tensor_len(out, size, size);
    assert_not_empty(image);
    let region = match config.crop {
        CropMode::RandomResized => random_resized_crop(image.dimensions(), config, rng),
        CropMode::Shift {
            crop_fraction,
            max_shift,
        } => shifted_crop(image.dimensions(), size, crop_fraction, max_shift, rng),
    };
    // Drawn even when disabled, so toggling an option does not reshuffle the other choices.
    let flip = rng.random_bool(0.5) && config.horizontal_flip;
    let factors = JitterFactors::sample(config, rng);
    with_scratch(|Scratch { resizer, pixels }| {
        let pixels = sized_buffer(pixels, size, size);
        resize_region(resizer, image, region, (size, size), pixels);
        let jitter = factors.for_pixels(pixels);
        let normalize = normalizer(norm);
        write_chw(pixels, size, flip, out, |rgb| normalize(jitter.apply(rgb)));
    });
}

/// Normalises an image that already has the target size into channel-major `out`.
///
/// # Panics
/// If `out.len() != 3 * width * height`.
pub fn to_tensor_into(image: &RgbImage, norm: &Normalization, out: &mut [f32]) {
    let (width, height) = image.dimensions();
    assert_tensor_len(out, width, height);
    if width == 0 {
        return;
    }
    let pixels = &image.as_raw()[..pixel_len(width, height)];
    write_chw(pixels, width, false, out, normalizer(norm));
}

/// Per-thread resampling state, reused across calls: the resizer keeps its convolution buffers
/// and `pixels` holds the resized crop, so the hot path allocates nothing once warm.
#[derive(Default)]
struct Scratch {
    resizer: Resizer,
    pixels: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<T>(work: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with_borrow_mut(work)
}

fn sized_buffer(buffer: &mut Vec<u8>, width: u32, height: u32) -> &mut [u8] {
    buffer.resize(pixel_len(width, height), 0);
    buffer
}

fn pixel_len(width: u32, height: u32) -> usize {
    width as usize * height as usize * 3
}

fn assert_tensor_len(out: &[f32], width: u32, height: u32) {
    assert_eq!(
        out.len(),
        pixel_len(width, height),
        "output must hold 3x{height}x{width} values"
    );
}

fn assert_not_empty(image: &RgbImage) {
    assert!(
        image.width() > 0 && image.height() > 0,
        "cannot transform an empty image"
    );
}

/// `longer * side / shorter`, rounded, in integers so equal inputs always give equal sizes.
fn scale_longer_side(longer: u32, shorter: u32, side: u32) -> u32 {
    let (longer, shorter, side) = (u64::from(longer), u64::from(shorter), u64::from(side));
    let scaled = (2 * longer * side + shorter) / (2 * shorter);
    u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
}

fn whole_image(image: &RgbImage) -> CropBox {
    CropBox {
        left: 0.0,
        top: 0.0,
        width: f64::from(image.width()),
        height: f64::from(image.height()),
    }
}

/// Resamples `region` of `image` into `dst`, a `width`×`height` RGB buffer.
fn resize_region(
    resizer: &mut Resizer,
    image: &RgbImage,
    region: CropBox,
    (width, height): (u32, u32),
    dst: &mut [u8],
) {
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .expect("an RgbImage holds width*height RGB pixels");
    let mut dst = Image::from_slice_u8(width, height, dst, PixelType::U8x3)
        .expect("destination buffer is sized for width*height RGB pixels");
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(region.left, region.top, region.width, region.height);
    resizer
        .resize(&src, &mut dst, &options)
        .expect("crop regions are built inside the source image");
}

/// Source square that becomes the evaluation crop.
fn center_region((width, height): (u32, u32), size: u32, crop_fraction: f32) -> CropBox {
    let size = f64::from(size);
    // Never below `size`, so the crop always fits inside the resized image.
    let resized_shorter = (size / f64::from(crop_fraction)).round().max(size);
    let side = f64::from(width.min(height)) * size / resized_shorter;
    // Snapped to 1/256 px so the centring arithmetic is exact in f64 and the box can never
    // reach past the image edge by a rounding error.
    let side = ((side * 256.0).floor() / 256.0).max(1.0 / 256.0);
    CropBox {
        left: (f64::from(width) - side) / 2.0,
        top: (f64::from(height) - side) / 2.0,
        width: side,
        height: side,
    }
}

/// torchvision's `RandomResizedCrop.get_params`, over whole pixels.
fn random_resized_crop(
    (width, height): (u32, u32),
    config: &AugmentConfig,
    rng: &mut impl Rng,
) -> CropBox {
    let (image_width, image_height) = (f64::from(width), f64::from(height));
    let area = image_width * image_height;
    let (scale_low, scale_high) = (f64::from(config.scale.0), f64::from(config.scale.1));
    let log_ratio = (
        f64::from(config.ratio.0).ln(),
        f64::from(config.ratio.1).ln(),
    );
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale_low, scale_high);
        let aspect_ratio = uniform(rng, log_ratio.0, log_ratio.1).exp();
        let crop_width = (target_area * aspect_ratio).sqrt().round();
        let crop_height = (target_area / aspect_ratio).sqrt().round();
        // `contains` is false for NaN, which a nonsensical config produces.
        if (1.0..=image_width).contains(&crop_width) && (1.0..=image_height).contains(&crop_height)
        {
            let (crop_width, crop_height) = (crop_width as u32, crop_height as u32);
            let left = rng.random_range(0..=width - crop_width);
            let top = rng.random_range(0..=height - crop_height);
            return pixel_box(left, top, crop_width, crop_height);
        }
    }
    let min_ratio = f64::from(config.ratio.0.min(config.ratio.1));
    let max_ratio = f64::from(config.ratio.0.max(config.ratio.1));
    let image_ratio = image_width / image_height;
    let (crop_width, crop_height) = if image_ratio < min_ratio {
        (width, clamp_side(image_width / min_ratio, height))
    } else if image_ratio > max_ratio {
        (clamp_side(image_height * max_ratio, width), height)
    } else {
        (width, height)
    };
    pixel_box(
        (width - crop_width) / 2,
        (height - crop_height) / 2,
        crop_width,
        crop_height,
    )
}

/// The evaluation crop of `crop_fraction` moved by whole source pixels, at most `max_shift` of
/// its side each way, clamped so it stays inside the image.
fn shifted_crop(
    (width, height): (u32, u32),
    size: u32,
    crop_fraction: f32,
    max_shift: f32,
    rng: &mut impl Rng,
) -> CropBox {
    let crop_fraction = if crop_fraction.is_finite() {
        crop_fraction.clamp(0.05, 1.0)
    } else {
        1.0
    };
    let centre = center_region((width, height), size, crop_fraction);
    let reach = (centre.width * f64::from(max_shift.max(0.0))).floor();
    let reach = if reach.is_finite() { reach } else { 0.0 };
    // Both shifts are drawn even when there is no room, so the flip that follows is the same.
    let mut shift = |start: f64, room: f64| {
        let offset = (uniform(rng, -reach, reach + 1.0).floor()).clamp(-reach, reach);
        (start + offset).clamp(0.0, room.max(0.0))
    };
    let left = shift(centre.left, f64::from(width) - centre.width);
    let top = shift(centre.top, f64::from(height) - centre.height);
    CropBox {
        left,
        top,
        ..centre
    }
}

/// Uniform in `[low, high)` (or `(high, low]`), without the panics of an empty range.
fn uniform(rng: &mut impl Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

fn clamp_side(length: f64, max: u32) -> u32 {
    (length.round() as u32).clamp(1, max)
}

fn pixel_box(left: u32, top: u32, width: u32, height: u32) -> CropBox {
    CropBox {
        left: f64::from(left),
        top: f64::from(top),
        width: f64::from(width),
        height: f64::from(height),
    }
}

fn normalizer(norm: &Normalization) -> impl Fn([f32; 3]) -> [f32; 3] {
    let (scale, offset) = norm.affine();
    move |rgb| [0, 1, 2].map(|channel| rgb[channel] * scale[channel] + offset[channel])
}

/// torchvision's `rgb_to_grayscale` weights, used for contrast and saturation.
fn luma([r, g, b]: [f32; 3]) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

#[derive(Debug, Clone, Copy)]
struct JitterFactors {
    brightness: f32,
    contrast: f32,
    saturation: f32,
}

impl JitterFactors {
    fn sample(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        Self {
            brightness: jitter_factor(rng, config.brightness),
            contrast: jitter_factor(rng, config.contrast),
            saturation: jitter_factor(rng, config.saturation),
        }
    }

    /// Fixes the contrast pivot: torchvision blends towards the mean grey level of the
    /// brightness-adjusted image, which needs one read-only pass before the fused pass.
    fn for_pixels(self, pixels: &[u8]) -> ColorJitter {
        let contrast_mean = if self.contrast == 1.0 {
            0.0
        } else {
            mean_grey(pixels, self.brightness)
        };
        ColorJitter {
            brightness: self.brightness,
            contrast: self.contrast,
            contrast_offset: (1.0 - self.contrast) * contrast_mean,
            saturation: self.saturation,
        }
    }
}

/// Mean grey level of interleaved RGB `pixels` after scaling by `brightness` (clamped).
fn mean_grey(pixels: &[u8], brightness: f32) -> f32 {
    // Eight independent partial sums let the compiler vectorise the reduction, which a single
    // floating-point accumulator forbids (reordering would change the result).
    const LANES: usize = 8;
    let grey =
        |pixel: &[u8; 3]| luma(pixel.map(|channel| (f32::from(channel) * brightness).min(255.0)));
    let (rgb, _) = pixels.as_chunks::<3>();
    let (groups, rest) = rgb.as_chunks::<LANES>();
    let mut sums = [0.0f32; LANES];
    for group in groups {
        for (sum, pixel) in sums.iter_mut().zip(group) {
            *sum += grey(pixel);
        }
    }
    let total: f32 = sums.iter().sum::<f32>() + rest.iter().map(grey).sum::<f32>();
    total / rgb.len().max(1) as f32
}

/// Uniform in `[max(0, 1 - strength), 1 + strength]`; a draw is made even when disabled.
fn jitter_factor(rng: &mut impl Rng, strength: f32) -> f32 {
    // `max` also maps NaN to 0, turning a nonsensical strength into "disabled".
    let strength = strength.max(0.0);
    let low = (1.0 - strength).max(0.0);
    let high = 1.0 + strength;
    low + (high - low) * rng.random::<f32>()
}

#[derive(Debug, Clone, Copy)]
struct ColorJitter {
    brightness: f32,
    contrast: f32,
    contrast_offset: f32,
    saturation: f32,
}

impl ColorJitter {
    fn apply(&self, rgb: [f32; 3]) -> [f32; 3] {
        // Each step clamps to the valid range, as torchvision does between its operations.
        let rgb = rgb.map(|channel| (channel * self.brightness).min(255.0));
        let rgb =
            rgb.map(|channel| (channel * self.contrast + self.contrast_offset).clamp(0.0, 255.0));
        let grey = luma(rgb) * (1.0 - self.saturation);
        rgb.map(|channel| (channel * self.saturation + grey).clamp(0.0, 255.0))
    }
}

/// Writes `width`-wide interleaved RGB `pixels` as three planes (CHW) into `out`, optionally
/// mirrored, mapping each pixel through `map` on the way.
fn write_chw(
    pixels: &[u8],
    width: u32,
    flip: bool,
    out: &mut [f32],
    map: impl Fn([f32; 3]) -> [f32; 3],
) {
    let width = width as usize;
    let plane_len = out.len() / 3;
    let (red, rest) = out.split_at_mut(plane_len);
    let (green, blue) = rest.split_at_mut(plane_len);
    let rows = pixels
        .chunks_exact(width * 3)
        .zip(red.chunks_exact_mut(width))
        .zip(green.chunks_exact_mut(width))
        .zip(blue.chunks_exact_mut(width));
    for (((row, red), green), blue) in rows {
        let (row, _) = row.as_chunks::<3>();
        let values = row.iter().map(|pixel| map(pixel.map(f32::from)));
        let planes = red.iter_mut().zip(green.iter_mut()).zip(blue.iter_mut());
        if flip {
            store_row(planes.rev(), values);
        } else {
            store_row(planes, values);
        }
    }
}

fn store_row<'a>(
    planes: impl Iterator<Item = ((&'a mut f32, &'a mut f32), &'a mut f32)>,
    values: impl Iterator<Item = [f32; 3]>,
) {
    for (((red, green), blue), [r, g, b]) in planes.zip(values) {
        (*red, *green, *blue) = (r, g, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const RED: [u8; 3] = [200, 20, 20];
    const GREEN: [u8; 3] = [20, 200, 20];
    const BLUE: [u8; 3] = [20, 20, 200];

    fn constant(width: u32, height: u32, rgb: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(width, height, Rgb(rgb))
    }

    fn left_red_right_blue(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| {
            Rgb(if x < width / 2 { RED } else { BLUE })
        })
    }

    fn tensor(size: u32) -> Vec<f32> {
        vec![f32::NAN; pixel_len(size, size)]
    }

    /// Value at channel `c`, row `y`, column `x` of a square CHW tensor.
    fn at(out: &[f32], size: u32, c: usize, y: u32, x: u32) -> f32 {
        let size = size as usize;
        out[c * size * size + y as usize * size + x as usize]
    }

    fn assert_all_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        let close = actual
            .iter()
            .zip(expected)
            .all(|(a, e)| (a - e).abs() < 1e-6);
        assert!(close, "{actual:?} != {expected:?}");
    }

    fn no_jitter() -> AugmentConfig {
        AugmentConfig {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn the_evaluation_crop_is_found_in_the_photo() {
        // Not shrunk: the centre square of side shorter × 48 / round(48 / 0.875) = 48 / 55.
        let [left, top, width, height] = evaluation_crop((66, 60), 60, 48, 0.875);
        let side = 60.0 * 48.0 / 55.0;
        assert!((width - side).abs() < 0.01 && (height - side).abs() < 0.01);
        assert!(
            (left - (66.0 - side) / 2.0).abs() < 0.01 && (top - (60.0 - side) / 2.0).abs() < 0.01
        );
        // Shrunk to 60 first (300×225 → 80×60): the same square, scaled back.
        let [left, top, width, height] = evaluation_crop((300, 225), 60, 48, 0.875);
        let side = 225.0 * 48.0 / 55.0;
        assert!(
            (width - side).abs() < 0.2 && (height - side).abs() < 0.2,
            "{width} {height}"
        );
        assert!((left - (300.0 - side) / 2.0).abs() < 0.2, "{left}");
        assert!((top - (225.0 - side) / 2.0).abs() < 0.2, "{top}");
        // A whole-image crop of a portrait photo.
        assert_eq!(
            evaluation_crop((40, 80), 100, 40, 1.0),
            [0.0, 20.0, 40.0, 40.0]
        );
    }

    #[test]
    fn resize_shorter_side_keeps_the_aspect_ratio() {
        let landscape = resize_shorter_side(&constant(300, 225, RED), 128);
        assert_eq!(landscape.dimensions(), (171, 128));
        let portrait = resize_shorter_side(&constant(225, 300, RED), 128);
        assert_eq!(portrait.dimensions(), (128, 171));
        let square = resize_shorter_side(&constant(50, 50, RED), 20);
        assert_eq!(square.dimensions(), (20, 20));
        let sliver = resize_shorter_side(&constant(1000, 1, RED), 3);
        assert_eq!(sliver.dimensions(), (3000, 3));
        assert!(landscape.pixels().all(|pixel| pixel.0 == RED));
    }

    #[test]
    fn resizing_to_the_same_size_is_a_copy() {
        let image = left_red_right_blue(31, 17);
        assert_eq!(resize_shorter_side(&image, 17), image);
        assert_eq!(resize_exact(&image, 31, 17), image);
    }

    #[test]
    fn resize_exact_produces_the_requested_size() {
        let resized = resize_exact(&left_red_right_blue(64, 48), 10, 30);
        assert_eq!(resized.dimensions(), (10, 30));
        assert_eq!(resized.get_pixel(0, 15).0, RED);
        assert_eq!(resized.get_pixel(9, 15).0, BLUE);
    }

    #[test]
    fn normalisation_presets() {
        let mut out = vec![0.0; 3 * 4 * 2];
        to_tensor_into(
            &constant(4, 2, [100, 150, 200]),
            &Normalization::imagenet(),
            &mut out,
        );
        let expected = [
            (100.0 - 123.675) / 58.395,
            (150.0 - 116.28) / 57.12,
            (200.0 - 103.53) / 57.375,
        ];
        for (plane, expected) in out.chunks_exact(8).zip(expected) {
            assert!(
                plane.iter().all(|value| (value - expected).abs() < 1e-5),
                "{plane:?}"
            );
        }

        let pixel = constant(1, 1, [255, 0, 127]);
        let mut out = [0.0; 3];
        to_tensor_into(&pixel, &Normalization::unit(), &mut out);
        assert_all_close(&out, &[1.0, 0.0, 127.0 / 255.0]);
        to_tensor_into(&pixel, &Normalization::efficientnet_lite(), &mut out);
        assert_all_close(&out, &[1.0, -127.0 / 128.0, 0.0]);
    }

    #[test]
    fn to_tensor_is_channel_major() {
        let image = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8, y as u8, 9]));
        let mut out = vec![0.0; 18];
        let identity = Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        to_tensor_into(&image, &identity, &mut out);
        assert_eq!(
            out,
            [
                0.0, 1.0, 2.0, 0.0, 1.0, 2.0, // red = x
                0.0, 0.0, 0.0, 1.0, 1.0, 1.0, // green = y
                9.0, 9.0, 9.0, 9.0, 9.0, 9.0, // blue
            ]
        );
    }

    #[test]
    #[should_panic(expected = "output must hold")]
    fn wrong_output_length_panics() {
        let mut out = vec![0.0; 10];
        center_crop_into(
            &constant(8, 8, RED),
            4,
            1.0,
            &Normalization::unit(),
            &mut out,
        );
    }

    #[test]
    fn center_crop_of_a_constant_image_is_constant() {
        let mut out = tensor(16);
        let norm = Normalization::imagenet();
        center_crop_into(
            &constant(90, 70, [100, 150, 200]),
            16,
            0.875,
            &norm,
            &mut out,
        );
        let expected = [
            (100.0 - 123.675) / 58.395,
            (150.0 - 116.28) / 57.12,
            (200.0 - 103.53) / 57.375,
        ];
        for (plane, expected) in out.chunks_exact(256).zip(expected) {
            assert!(plane.iter().all(|value| (value - expected).abs() < 1e-5));
        }
    }

    #[test]
    fn center_crop_picks_the_centre() {
        // A green 60x60 square in the middle of a red 200x100 image; at crop_fraction 0.5 the
        // crop covers the central 50x50 source pixels, all green.
        let image = RgbImage::from_fn(200, 100, |x, y| {
            let inside = (70..130).contains(&x) && (20..80).contains(&y);
            Rgb(if inside { GREEN } else { RED })
        });
        let mut out = tensor(32);
        center_crop_into(&image, 32, 0.5, &Normalization::unit(), &mut out);
        let green = GREEN.map(|channel| f32::from(channel) / 255.0);
        for (plane, expected) in out.chunks_exact(32 * 32).zip(green) {
            assert!(plane.iter().all(|value| (value - expected).abs() < 1e-6));
        }

        // At crop_fraction 1 the whole 100x100 centre is used and the red margins show.
        center_crop_into(&image, 32, 1.0, &Normalization::unit(), &mut out);
        assert!((at(&out, 32, 0, 16, 0) - 200.0 / 255.0).abs() < 1e-6);
        assert!((at(&out, 32, 1, 16, 16) - 200.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn center_crop_handles_awkward_sizes() {
        let mut out = tensor(7);
        for (width, height) in [(1, 1), (1, 300), (299, 3), (8, 9), (1001, 997)] {
            for fraction in [0.01, 0.3, 0.875, 0.9999, 1.0] {
                center_crop_into(
                    &constant(width, height, BLUE),
                    7,
                    fraction,
                    &Normalization::unit(),
                    &mut out,
                );
                assert!(out.iter().all(|value| value.is_finite()));
            }
        }
    }

    #[test]
    fn augmentation_is_deterministic_per_seed() {
        let image = RgbImage::from_fn(120, 90, |x, y| Rgb([x as u8, y as u8, (x * y) as u8]));
        let config = AugmentConfig::default();
        let norm = Normalization::imagenet();
        let run = |seed: u64| {
            let mut out = tensor(48);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            augment_into(&image, 48, &config, &mut rng, &norm, &mut out);
            out.iter().map(|value| value.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(9).iter().all(|&bits| f32::from_bits(bits).is_finite()));
    }

    #[test]
    fn flip_mirrors_the_crop() {
        // Full-image crops only, so flipping is the sole random difference between seeds.
        let config = AugmentConfig {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            ..no_jitter()
        };
        let image = RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 3, y as u8 * 2, 50]));
        let norm = Normalization::unit();
        let mut plain = tensor(32);
        center_crop_into(&image, 32, 1.0, &norm, &mut plain);

        let mut flipped_seen = false;
        let mut plain_seen = false;
        for seed in 0..32 {
            let mut out = tensor(32);
            augment_into(
                &image,
                32,
                &config,
                &mut ChaCha8Rng::seed_from_u64(seed),
                &norm,
                &mut out,
            );
            let mirrored = (0..3).all(|c| {
                (0..32)
                    .all(|y| (0..32).all(|x| at(&out, 32, c, y, x) == at(&plain, 32, c, y, 31 - x)))
            });
            if out == plain {
                plain_seen = true;
            } else {
                assert!(mirrored, "seed {seed} is neither the image nor its mirror");
                flipped_seen = true;
            }
        }
        assert!(flipped_seen && plain_seen);

        let never = AugmentConfig {
            horizontal_flip: false,
            ..config
        };
        for seed in 0..16 {
            let mut out = tensor(32);
            augment_into(
                &image,
                32,
                &never,
                &mut ChaCha8Rng::seed_from_u64(seed),
                &norm,
                &mut out,
            );
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn shifted_crops_keep_the_evaluation_scale_and_stay_inside() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let centre = center_region((40, 32), 32, 0.875);
        let mut offsets = HashSet::new();
        for _ in 0..400 {
            let region = shifted_crop((40, 32), 32, 0.875, 0.125, &mut rng);
            assert_eq!((region.width, region.height), (centre.width, centre.height));
            assert!(region.left >= 0.0 && region.top >= 0.0, "{region:?}");
            assert!(region.left + region.width <= 40.0 + 1e-9, "{region:?}");
            assert!(region.top + region.height <= 32.0 + 1e-9, "{region:?}");
            let dx = region.left - centre.left;
            assert!(dx.abs() <= (centre.width / 8.0).floor(), "{region:?}");
            assert_eq!(dx, dx.round(), "shifts are whole pixels");
            offsets.insert(dx as i64);
        }
        // A 28 px crop reaches 3 px each way: every offset from -3 to 3 comes up.
        assert_eq!(offsets.len(), 7, "{offsets:?}");

        // No room (crop fraction 1 on a square photo): the crop stays where it is.
        let full = shifted_crop((32, 32), 32, 1.0, 0.125, &mut rng);
        assert_eq!((full.left, full.top, full.width), (0.0, 0.0, 32.0));
        // Nonsense settings give a crop inside the image, not a panic.
        let odd = shifted_crop((20, 10), 8, f32::NAN, f32::INFINITY, &mut rng);
        assert!(
            odd.left >= 0.0 && odd.left + odd.width <= 20.0 + 1e-9,
            "{odd:?}"
        );
    }

    #[test]
    fn flip_shift_leaves_colours_alone() {
        let image = constant(36, 36, RED);
        let norm = Normalization::unit();
        let mut plain = tensor(32);
        center_crop_into(&image, 32, 0.875, &norm, &mut plain);
        let mut out = tensor(32);
        augment_into(
            &image,
            32,
            &AugmentConfig::flip_shift(0.875),
            &mut ChaCha8Rng::seed_from_u64(2),
            &norm,
            &mut out,
        );
        assert_all_close(&out, &plain);
    }

    #[test]
    fn crops_respect_scale_and_ratio() {
        let config = AugmentConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let region = random_resized_crop((300, 225), &config, &mut rng);
            assert!(region.left >= 0.0 && region.top >= 0.0);
            assert!(region.left + region.width <= 300.0);
            assert!(region.top + region.height <= 225.0);
            let fraction = region.width * region.height / (300.0 * 225.0);
            assert!((0.24..=1.0).contains(&fraction), "{region:?}");
        }
    }

    #[test]
    fn impossible_crop_parameters_fall_back_to_a_centre_crop() {
        let config = AugmentConfig {
            scale: (4.0, 5.0),
            ..AugmentConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let region = random_resized_crop((400, 100), &config, &mut rng);
        // 400x100 is wider than 4:3 allows, so the centre crop is 133x100.
        assert_eq!(
            (region.left, region.top, region.width, region.height),
            (133.0, 0.0, 133.0, 100.0)
        );

        let nonsense = AugmentConfig {
            scale: (f32::NAN, 1.0),
            ratio: (-1.0, 0.0),
            brightness: -3.0,
            ..AugmentConfig::default()
        };
        let mut out = tensor(8);
        augment_into(
            &constant(30, 20, RED),
            8,
            &nonsense,
            &mut rng,
            &Normalization::unit(),
            &mut out,
        );
        assert!(out.iter().all(|value| value.is_finite()));
    }

    #[test]
    fn colour_jitter_changes_values_within_range() {
        let config = AugmentConfig {
            crop: CropMode::RandomResized,
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            horizontal_flip: false,
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
        };
        let image = left_red_right_blue(40, 40);
        let norm = Normalization::unit();
        let mut plain = tensor(20);
        center_crop_into(&image, 20, 1.0, &norm, &mut plain);
        let mut jittered = tensor(20);
        augment_into(
            &image,
            20,
            &config,
            &mut ChaCha8Rng::seed_from_u64(5),
            &norm,
            &mut jittered,
        );
        assert_ne!(plain, jittered);
        assert!(jittered.iter().all(|value| (0.0..=1.0).contains(value)));
    }

    #[test]
    fn disabled_jitter_on_a_full_crop_matches_the_evaluation_transform() {
        let config = AugmentConfig {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            horizontal_flip: false,
            ..no_jitter()
        };
        let image = RgbImage::from_fn(50, 50, |x, y| Rgb([x as u8 * 5, y as u8 * 5, 128]));
        let norm = Normalization::imagenet();
        let mut expected = tensor(24);
        center_crop_into(&image, 24, 1.0, &norm, &mut expected);
        let mut out = tensor(24);
        augment_into(
            &image,
            24,
            &config,
            &mut ChaCha8Rng::seed_from_u64(0),
            &norm,
            &mut out,
        );
        assert_eq!(out, expected);
    }

    /// Throughput check for the data loader; run with `cargo test --release -p bestiary-dataset
    /// --lib -- --ignored --nocapture decode_and_augment`.
    #[test]
    #[ignore = "timing, not correctness"]
    fn decode_and_augment_timing() {
        use crate::decode::{DecodeLimits, decode};
        use std::time::Instant;

        let photo = RgbImage::from_fn(300, 225, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        let mut jpeg = std::io::Cursor::new(Vec::new());
        photo
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .expect("encodes");
        let jpeg = jpeg.into_inner();
        let (config, norm, limits) = (
            AugmentConfig::default(),
            Normalization::imagenet(),
            DecodeLimits::default(),
        );
        let mut out = tensor(128);
        let iterations = 2_000u64;
        let (mut decoding, mut augmenting) = (0.0, 0.0);
        for seed in 0..iterations {
            let started = Instant::now();
            let decoded = decode(&jpeg, &limits).expect("decodes");
            let decoded_at = Instant::now();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            augment_into(&decoded.image, 128, &config, &mut rng, &norm, &mut out);
            decoding += (decoded_at - started).as_secs_f64();
            augmenting += decoded_at.elapsed().as_secs_f64();
        }
        let per_image = |total: f64| total / iterations as f64 * 1e6;
        println!(
            "300x225 JPEG -> 128: decode {:.0} us, augment {:.0} us per image",
            per_image(decoding),
            per_image(augmenting)
        );
    }
}
