//! Draws a class activation map over its photo: ReLU, scaled to 0..1, upsampled bilinearly onto
//! the square the model saw, coloured with viridis and blended in; encoded as PNG.

use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{ImageEncoder, Rgb, RgbImage};

use crate::error::EngineError;

/// The longer side of an overlay, in pixels: enough to see the map on any screen, and a PNG a
/// browser loads at once even for a 24-megapixel photo.
pub const MAX_OVERLAY_SIDE: u32 = 1024;

/// viridis (viridisLite's `viridis(9)`): perceptually uniform and readable by colour-blind
/// people, dark where the model did not look and yellow where it did.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 45.0, 123.0],
    [59.0, 82.0, 139.0],
    [44.0, 114.0, 142.0],
    [33.0, 144.0, 140.0],
    [39.0, 173.0, 129.0],
    [93.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// How much of the colour covers the photo where the map is 0 and where it is 1: the photo
/// stays visible where the model did not look.
const ALPHA_RANGE: (f32, f32) = (0.25, 0.7);
/// The brightness left outside the square the model saw.
const OUTSIDE_DIM: f32 = 0.45;

/// The colour of `value` in 0..1 (clamped), interpolated linearly between the table's stops.
pub fn viridis(value: f32) -> [f32; 3] {
    let position = value.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let low = (position.floor() as usize).min(VIRIDIS.len() - 2);
    let t = position - low as f32;
    let (a, b) = (VIRIDIS[low], VIRIDIS[low + 1]);
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t)
}

/// `grid` with negative values set to 0 and the rest divided by the largest, so the strongest
/// evidence is 1; all zeros when nothing is positive (or a value is not finite).
pub fn normalized(grid: &[f32]) -> Vec<f32> {
    let max = grid.iter().copied().fold(0.0f32, f32::max);
    if !(max > 0.0 && max.is_finite()) || grid.iter().any(|v| !v.is_finite()) {
        return vec![0.0; grid.len()];
    }
    grid.iter().map(|&v| v.max(0.0) / max).collect()
}

/// Bilinear sample of the `height × width` row-major `grid` at (`x`, `y`) in cell units, cell
/// centres at `i + 0.5` (as image resizing places them), clamped at the edges.
fn sample(grid: &[f32], height: usize, width: usize, x: f64, y: f64) -> f32 {
    let axis = |position: f64, size: usize| {
        let centred = (position - 0.5).clamp(0.0, (size - 1) as f64);
        let low = (centred.floor() as usize).min(size - 1);
        let high = (low + 1).min(size - 1);
        (low, high, (centred - low as f64) as f32)
    };
    let (x0, x1, tx) = axis(x, width);
    let (y0, y1, ty) = axis(y, height);
    let at = |row: usize, column: usize| grid[row * width + column];
    let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * tx;
    let bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * tx;
    top + (bottom - top) * ty
}

/// The photo, shrunk to at most `max_side` on its longer side, with `grid` (`height × width`,
/// any units; see [`normalized`]) stretched over `crop` (`[left, top, width, height]` in the
/// photo's pixels: the square the model saw) and blended in; outside the crop the photo is
/// dimmed. Returns the image and the crop in its pixels.
///
/// # Panics
/// If `grid` does not hold `height × width` values, or either is 0.
pub fn heat_overlay(
    photo: &RgbImage,
    crop: [f64; 4],
    grid: &[f32],
    height: usize,
    width: usize,
    max_side: u32,
) -> (RgbImage, [f64; 4]) {
    assert!(height > 0 && width > 0, "a map has at least one cell");
    assert_eq!(
        grid.len(),
        height * width,
        "the grid holds height × width values"
    );
    let longer = photo.width().max(photo.height()).max(1);
    let scale = (f64::from(max_side) / f64::from(longer)).min(1.0);
    let mut image = if scale < 1.0 {
        let side = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
        image::imageops::resize(
            photo,
            side(photo.width()),
            side(photo.height()),
            FilterType::Triangle,
        )
    } else {
        photo.clone()
    };
    // Exact per axis even after the rounding of the shrunk sides.
    let sx = f64::from(image.width()) / f64::from(photo.width().max(1));
    let sy = f64::from(image.height()) / f64::from(photo.height().max(1));
    let crop = [crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy];
    let [left, top, crop_width, crop_height] = crop;
    let values = normalized(grid);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        // The pixel's centre, as a fraction of the crop.
        let u = (f64::from(x) + 0.5 - left) / crop_width;
        let v = (f64::from(y) + 0.5 - top) / crop_height;
        let Rgb(rgb) = *pixel;
        *pixel = if (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v) {
            let value = sample(&values, height, width, u * width as f64, v * height as f64);
            let colour = viridis(value);
            let alpha = ALPHA_RANGE.0 + (ALPHA_RANGE.1 - ALPHA_RANGE.0) * value;
            Rgb([0, 1, 2]
                .map(|c| (f32::from(rgb[c]) * (1.0 - alpha) + colour[c] * alpha).round() as u8))
        } else {
            Rgb(rgb.map(|channel| (f32::from(channel) * OUTSIDE_DIM).round() as u8))
        };
    }
    (image, crop)
}

/// `image` as PNG bytes.
///
/// # Errors
/// [`EngineError::Inference`] if the encoder fails (it does not for an RGB image in memory).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, EngineError> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| EngineError::Inference {
            engine: "overlay",
            reason: format!("cannot encode the overlay as PNG: {e}"),
        })?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: Rgb<u8> = Rgb([100, 100, 100]);

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), VIRIDIS[0]);
        assert_eq!(viridis(1.0), VIRIDIS[8]);
        assert_eq!(viridis(-3.0), VIRIDIS[0]);
        let middle = viridis(0.5);
        assert_eq!(middle, VIRIDIS[4]);
        // Brightness rises monotonically: a perceptual map, not a rainbow.
        let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let steps: Vec<f32> = (0..=20).map(|i| luma(viridis(i as f32 / 20.0))).collect();
        assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
    }

    #[test]
    fn normalising_keeps_positive_evidence_only() {
        assert_eq!(normalized(&[-2.0, 0.0, 1.0, 4.0]), [0.0, 0.0, 0.25, 1.0]);
        assert_eq!(normalized(&[-2.0, -1.0]), [0.0, 0.0]);
        assert_eq!(normalized(&[f32::NAN, 1.0]), [0.0, 0.0]);
    }

    #[test]
    fn bilinear_sampling_hits_cell_centres_and_clamps() {
        let grid = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(sample(&grid, 2, 2, 0.5, 0.5), 0.0);
        assert_eq!(sample(&grid, 2, 2, 1.5, 1.5), 3.0);
        assert_eq!(sample(&grid, 2, 2, 1.0, 0.5), 0.5);
        assert_eq!(sample(&grid, 2, 2, 1.0, 1.0), 1.5);
        assert_eq!(sample(&grid, 2, 2, -5.0, 9.0), 2.0);
    }

    #[test]
    fn the_map_covers_the_crop_and_the_rest_is_dimmed() {
        let photo = RgbImage::from_pixel(300, 200, GREY);
        // A centre square as the evaluation crop takes it, with the evidence top left.
        let crop = [50.0, 0.0, 200.0, 200.0];
        let grid = [1.0, 0.0, 0.0, 0.0];
        let (overlay, shown) = heat_overlay(&photo, crop, &grid, 2, 2, 1024);
        assert_eq!(overlay.dimensions(), (300, 200));
        assert_eq!(shown, crop);
        let dim = (100.0 * OUTSIDE_DIM).round() as u8;
        assert_eq!(overlay.get_pixel(10, 100).0, [dim; 3]);
        assert_eq!(overlay.get_pixel(290, 100).0, [dim; 3]);
        let hot = overlay.get_pixel(55, 5).0;
        let cold = overlay.get_pixel(245, 195).0;
        assert!(hot[0] > 150 && hot[1] > 150 && hot[2] < 100, "{hot:?}");
        assert!(cold[2] > cold[1] && cold[0] < 100, "{cold:?}");
    }

    #[test]
    fn large_photos_are_shrunk_with_their_crop() {
        let photo = RgbImage::from_pixel(4000, 3000, GREY);
        let (overlay, crop) = heat_overlay(
            &photo,
            [500.0, 0.0, 3000.0, 3000.0],
            &[1.0],
            1,
            1,
            MAX_OVERLAY_SIDE,
        );
        assert_eq!(overlay.dimensions(), (1024, 768));
        let expected = [128.0, 0.0, 768.0, 768.0];
        assert!(
            crop.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-9),
            "{crop:?}"
        );
        let png = encode_png(&overlay).unwrap();
        let decoded = image::load_from_memory(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (1024, 768));
    }
}
