//! Turns the bytes of a photo into an upright 8-bit RGB image, rejecting anything unsafe or broken.

use std::io::{Cursor, ErrorKind};

use image::metadata::Orientation;
use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage, RgbaImage,
};

/// Formats a photo dataset may contain. Everything else `image` could guess (TIFF, ICO, ...) is
/// rejected rather than half-supported, because those decoders are not compiled in.
const ACCEPTED_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
];

/// Resource ceilings applied before any pixel is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, as declared by the file header.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, output buffer included.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_alloc_bytes: 1 << 30,
        }
    }
}

impl DecodeLimits {
    /// Limits for building a decoder, when the dimensions are not known yet: only the memory
    /// ceiling applies, so that an oversized header still yields its dimensions for the error.
    fn header_limits(&self) -> image::Limits {
        // `image::Limits` is non-exhaustive, so it can only be built by adjusting a default.
        let mut limits = image::Limits::default();
        limits.max_image_width = None;
        limits.max_image_height = None;
        limits.max_alloc = Some(self.max_alloc_bytes);
        limits
    }

    /// Limits for decoding pixels. No side can exceed `max_pixels` while the other is at least
    /// one pixel, which gives the strict per-side limits that zune-jpeg enforces itself.
    fn pixel_limits(&self) -> image::Limits {
        let max_side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = self.header_limits();
        limits.max_image_width = Some(max_side);
        limits.max_image_height = Some(max_side);
        limits
    }
}

/// Why a file could not be turned into an image.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("zero-byte file")]
    Empty,
    #[error("not a supported image: {0}")]
    NotAnImage(String),
    /// `width` and `height` are 0 when a limit was hit while reading metadata, before the
    /// dimensions were known.
    #[error(
        "image of {width}x{height} pixels exceeds the decode limits (at most {max_pixels} pixels)"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("truncated or corrupt image data: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable, machine-readable identifier for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotAnImage(_) => "not-an-image",
            Self::TooLarge { .. } => "too-large",
            Self::Corrupt(_) => "corrupt",
        }
    }
}

/// A decoded photo, already rotated/flipped upright according to its EXIF orientation.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    /// Format detected from the content.
    pub format: ImageFormat,
    /// Width after orientation, equal to `image.width()`.
    pub width: u32,
    /// Height after orientation, equal to `image.height()`.
    pub height: u32,
}

/// Decodes `bytes` into an upright RGB image.
///
/// The format is detected from the content. Transparent pixels are composited over white,
/// animations contribute their first frame, and anything above 8 bits per channel is reduced.
///
/// # Errors
/// [`DecodeError::TooLarge`] is decided from the header, before pixel memory is allocated;
/// truncated data is [`DecodeError::Corrupt`], never a partially grey image.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let format = detect_format(bytes)?;
    let mut decoder = open_decoder(bytes, format, limits)?;
    let (width, height) = decoder.dimensions();
    let too_large = || DecodeError::TooLarge {
        width,
        height,
        max_pixels: limits.max_pixels,
    };
    let decode_error = |error| match error {
        ImageError::Limits(_) => too_large(),
        error => classify(error, format, limits),
    };
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large());
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "image has no pixels ({width}x{height})"
        )));
    }

    let mut pixel_limits = limits.pixel_limits();
    pixel_limits
        .reserve(decoder.total_bytes())
        .map_err(|_| too_large())?;
    decoder.set_limits(pixel_limits).map_err(decode_error)?;
    if format == ImageFormat::Jpeg && jpeg_end_of_image(bytes).is_none() {
        return Err(DecodeError::Corrupt(
            "truncated JPEG (no end-of-image marker)".to_owned(),
        ));
    }

    let orientation = read_orientation(&mut decoder);
    let decoded = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    let mut upright = DynamicImage::ImageRgb8(flatten_to_rgb(decoded));
    upright.apply_orientation(orientation);
    let image = upright.into_rgb8();
    Ok(Decoded {
        width: image.width(),
        height: image.height(),
        image,
        format,
    })
}

/// Reads the displayed dimensions (after EXIF orientation, like [`Decoded`]) and the format,
/// parsing headers and metadata only.
///
/// # Errors
/// As [`decode`], except that size limits are not applied and truncated pixel data goes
/// unnoticed.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32, ImageFormat), DecodeError> {
    let format = detect_format(bytes)?;
    let mut decoder = open_decoder(bytes, format, &DecodeLimits::default())?;
    let (width, height) = decoder.dimensions();
    let (width, height) = match read_orientation(&mut decoder) {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        Orientation::NoTransforms
        | Orientation::Rotate180
        | Orientation::FlipHorizontal
        | Orientation::FlipVertical => (width, height),
    };
    Ok((width, height, format))
}

fn detect_format(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes)
        .map_err(|_| DecodeError::NotAnImage("unrecognised file signature".to_owned()))?;
    if ACCEPTED_FORMATS.contains(&format) {
        Ok(format)
    } else {
        Err(DecodeError::NotAnImage(format!(
            "{} is not an accepted format",
            format.to_mime_type()
        )))
    }
}

fn open_decoder<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<impl ImageDecoder + 'a, DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.header_limits());
    reader
        .into_decoder()
        .map_err(|error| classify(error, format, limits))
}

/// A broken or absurd orientation tag should not cost us an otherwise good photo.
fn read_orientation(decoder: &mut impl ImageDecoder) -> Orientation {
    decoder.orientation().unwrap_or(Orientation::NoTransforms)
}

/// Maps an `image` error to ours. Limit errors reaching this point happened before the
/// dimensions were known, so they carry none.
fn classify(error: ImageError, format: ImageFormat, limits: &DecodeLimits) -> DecodeError {
    match error {
        ImageError::Limits(_) => DecodeError::TooLarge {
            width: 0,
            height: 0,
            max_pixels: limits.max_pixels,
        },
        ImageError::Unsupported(unsupported) => DecodeError::NotAnImage(format!(
            "unsupported {} variant: {unsupported}",
            format.to_mime_type()
        )),
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("unexpected end of file".to_owned())
        }
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// Converts any colour type to 8-bit RGB. Alpha is composited over white rather than dropped,
/// because dropping it exposes whatever colour the encoder left under transparent pixels
/// (often black), which a classifier would learn as signal.
fn flatten_to_rgb(image: DynamicImage) -> RgbImage {
    if image.color().has_alpha() {
        composite_over_white(&image.into_rgba8())
    } else {
        image.into_rgb8()
    }
}

fn composite_over_white(rgba: &RgbaImage) -> RgbImage {
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, pixel) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, alpha] = pixel.0;
        out.0 = [r, g, b].map(|channel| over_white(channel, alpha));
    }
    rgb
}

fn over_white(channel: u8, alpha: u8) -> u8 {
    let alpha = u32::from(alpha);
    let blended = u32::from(channel) * alpha + 255 * (255 - alpha);
    // Rounded division by 255; the result is at most 255 so the narrowing is lossless.
    ((blended + 127) / 255) as u8
}

/// Offset just past the end-of-image marker that closes the primary JPEG image, or `None` if the
/// stream ends first.
///
/// zune-jpeg (as configured by `image`, non-strict) pads a truncated entropy-coded segment with
/// zero bits and returns `Ok` with grey lower rows, so truncation has to be detected from the
/// framing. The segments are followed by their lengths from SOI rather than searching for the
/// last `FF D9`, because an EXIF thumbnail holds its own end marker and phones append data after
/// the image (motion-photo videos, MPF pictures).
fn jpeg_end_of_image(bytes: &[u8]) -> Option<usize> {
    const SOI: [u8; 2] = [0xFF, 0xD8];
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    const TEM: u8 = 0x01;
    const RST_FIRST: u8 = 0xD0;
    const RST_LAST: u8 = 0xD7;

    if !bytes.starts_with(&SOI) {
        return None;
    }
    let mut position = SOI.len();
    let mut in_scan = false;
    loop {
        let marker_at = next_marker(bytes, position, in_scan)?;
        let marker = bytes[marker_at + 1];
        position = marker_at + 2;
        match marker {
            EOI => return Some(position),
            // TEM and restart markers stand alone, without a length.
            TEM | RST_FIRST..=RST_LAST => {}
            marker => {
                let length = bytes.get(position..position + 2)?;
                // The length counts its own two bytes; `position` always advances, so the loop
                // terminates even on nonsense lengths.
                position += usize::from(u16::from_be_bytes([length[0], length[1]]));
                in_scan = marker == SOS;
            }
        }
    }
}

/// Position of the next marker (`FF xx`) at or after `from`. Fill bytes (`FF FF`) are skipped;
/// inside entropy-coded data so are stuffed bytes (`FF 00`) and restart markers. Garbage between
/// segments is skipped too, matching the leniency of the decoder.
fn next_marker(bytes: &[u8], from: usize, in_scan: bool) -> Option<usize> {
    let mut position = from;
    loop {
        position += bytes
            .get(position..)?
            .iter()
            .position(|&byte| byte == 0xFF)?;
        match *bytes.get(position + 1)? {
            0x00 | 0xFF => position += 1,
            0xD0..=0xD7 if in_scan => position += 2,
            _ => return Some(position),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, Rgba};
    use std::time::{Duration, Instant};

    const RED: [u8; 3] = [220, 30, 30];
    const BLUE: [u8; 3] = [30, 30, 220];

    /// Left half red, right half blue: colours survive lossy codecs and reveal rotations.
    fn two_tone(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| {
            Rgb(if x < width / 2 { RED } else { BLUE })
        })
    }

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, format)
            .expect("test image encodes");
        bytes.into_inner()
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        encode(
            DynamicImage::ImageRgb8(two_tone(width, height)),
            ImageFormat::Jpeg,
        )
    }

    fn decode_ok(bytes: &[u8]) -> Decoded {
        decode(bytes, &DecodeLimits::default()).expect("decodes")
    }

    fn assert_close(actual: [u8; 3], expected: [u8; 3], tolerance: u8) {
        let close = actual
            .iter()
            .zip(expected)
            .all(|(&a, e)| a.abs_diff(e) <= tolerance);
        assert!(
            close,
            "{actual:?} is not within {tolerance} of {expected:?}"
        );
    }

    /// Big-endian PNG chunk with its CRC (CRC-32/ISO-HDLC over type and data).
    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = !0u32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let length = u32::try_from(data.len()).expect("small chunk");
        let mut chunk = length.to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(&(!crc).to_be_bytes());
        chunk
    }

    /// An APP1 segment holding an EXIF block with a single orientation tag.
    fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2A\x00\x00\x00\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes()); // entry count
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let length = u16::try_from(payload.len() + 2).expect("small segment");
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&length.to_be_bytes());
        segment.extend_from_slice(&payload);
        segment
    }

    #[test]
    fn every_accepted_format_round_trips() {
        let rgb = DynamicImage::ImageRgb8(two_tone(48, 32));
        for format in ACCEPTED_FORMATS {
            let decoded = decode_ok(&encode(rgb.clone(), format));
            assert_eq!(decoded.format, format);
            assert_eq!((decoded.width, decoded.height), (48, 32), "{format:?}");
            assert_eq!(decoded.image.dimensions(), (48, 32), "{format:?}");
            assert_close(decoded.image.get_pixel(4, 16).0, RED, 12);
            assert_close(decoded.image.get_pixel(44, 16).0, BLUE, 12);
        }
    }

    #[test]
    fn dimensions_reads_the_header() {
        assert_eq!(dimensions(&jpeg(40, 20)), Ok((40, 20, ImageFormat::Jpeg)));
        let png = encode(DynamicImage::ImageRgb8(two_tone(7, 9)), ImageFormat::Png);
        assert_eq!(dimensions(&png), Ok((7, 9, ImageFormat::Png)));
        assert_eq!(dimensions(b""), Err(DecodeError::Empty));
    }

    #[test]
    fn zero_bytes_are_empty() {
        let error = decode(&[], &DecodeLimits::default()).unwrap_err();
        assert_eq!(error, DecodeError::Empty);
        assert_eq!(error.code(), "empty");
        assert_eq!(error.to_string(), "zero-byte file");
    }

    #[test]
    fn text_is_not_an_image() {
        let error = decode(b"hello, not a jpeg", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(error, DecodeError::NotAnImage(_)), "{error:?}");
        assert_eq!(error.code(), "not-an-image");
    }

    #[test]
    fn formats_outside_the_allow_list_are_refused_by_content() {
        // A TIFF signature: recognised by `image`, but not an accepted photo format.
        let error = decode(b"II*\x00\x08\x00\x00\x00", &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            error,
            DecodeError::NotAnImage("image/tiff is not an accepted format".to_owned())
        );
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let bytes = jpeg(300, 225);
        let error = decode(&bytes[..bytes.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Corrupt("truncated JPEG (no end-of-image marker)".to_owned())
        );
        assert_eq!(error.code(), "corrupt");
    }

    #[test]
    fn jpeg_with_trailing_data_after_the_image_is_accepted() {
        let mut bytes = jpeg(40, 20);
        bytes.extend_from_slice(b"\xFF\xDA appended video \x00\x01\x02 with stray markers");
        assert_eq!(decode_ok(&bytes).image.dimensions(), (40, 20));
    }

    #[test]
    fn progressive_and_restart_marker_jpegs_are_complete_only_when_whole() {
        let rgb: Vec<u8> = two_tone(64, 48).into_raw();
        for progressive in [false, true] {
            let mut bytes = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
            encoder.set_progressive(progressive);
            encoder.set_restart_interval(2);
            encoder
                .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
                .expect("JPEG encodes");

            assert_eq!(decode_ok(&bytes).image.dimensions(), (64, 48));
            for cut in [bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 1] {
                let result = decode(&bytes[..cut], &DecodeLimits::default());
                assert!(
                    matches!(result, Err(DecodeError::Corrupt(_))),
                    "progressive {progressive}, cut at {cut}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn an_embedded_thumbnail_does_not_hide_truncation() {
        // An APP1 segment carrying a complete JPEG, as EXIF thumbnails do, end marker included.
        let thumbnail = jpeg(8, 8);
        let mut app1 = vec![0xFF, 0xE1];
        let length = u16::try_from(thumbnail.len() + 2).expect("small thumbnail");
        app1.extend_from_slice(&length.to_be_bytes());
        app1.extend_from_slice(&thumbnail);

        let main = jpeg(300, 225);
        let mut bytes = main[..2].to_vec();
        bytes.extend(app1);
        bytes.extend_from_slice(&main[2..]);
        assert_eq!(decode_ok(&bytes).image.dimensions(), (300, 225));

        let cut = bytes.len() - main.len() / 2;
        let result = decode(&bytes[..cut], &DecodeLimits::default());
        assert!(matches!(result, Err(DecodeError::Corrupt(_))), "{result:?}");
    }

    #[test]
    fn truncated_files_of_every_format_are_errors() {
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        }));
        for format in ACCEPTED_FORMATS {
            let bytes = encode(rgb.clone(), format);
            let result = decode(&bytes[..bytes.len() / 2], &DecodeLimits::default());
            assert!(
                matches!(result, Err(DecodeError::Corrupt(_))),
                "{format:?}: {result:?}"
            );
        }
    }

    #[test]
    fn png_bomb_is_rejected_from_its_header() {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&40_000u32.to_be_bytes());
        ihdr.extend_from_slice(&40_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend(png_chunk(b"IHDR", &ihdr));
        bytes.extend(png_chunk(
            b"IDAT",
            &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ));
        bytes.extend(png_chunk(b"IEND", &[]));

        let started = Instant::now();
        let error = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(
            error,
            DecodeError::TooLarge {
                width: 40_000,
                height: 40_000,
                max_pixels: 100_000_000
            }
        );
        assert_eq!(error.code(), "too-large");
        assert_eq!(dimensions(&bytes), Ok((40_000, 40_000, ImageFormat::Png)));
    }

    #[test]
    fn output_allocation_counts_against_the_memory_limit() {
        let limits = DecodeLimits {
            max_pixels: 1_000_000,
            max_alloc_bytes: 1_000,
        };
        let error = decode(&jpeg(40, 20), &limits).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::TooLarge {
                    width: 40,
                    height: 20,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        let plain = jpeg(40, 20);
        let mut bytes = plain[..2].to_vec();
        bytes.extend(exif_orientation_segment(6));
        bytes.extend_from_slice(&plain[2..]);

        let decoded = decode_ok(&bytes);
        assert_eq!((decoded.width, decoded.height), (20, 40));
        assert_eq!(decoded.image.dimensions(), (20, 40));
        // Orientation 6 means "rotate 90° clockwise to display": the left (red) half ends on top.
        assert_close(decoded.image.get_pixel(10, 4).0, RED, 12);
        assert_close(decoded.image.get_pixel(10, 36).0, BLUE, 12);
        assert_eq!(dimensions(&bytes), Ok((20, 40, ImageFormat::Jpeg)));
    }

    #[test]
    fn animated_gif_gives_its_first_frame() {
        let frames = [RED, BLUE].map(|colour| {
            let rgba = RgbaImage::from_pixel(6, 4, Rgba([colour[0], colour[1], colour[2], 255]));
            image::Frame::new(rgba)
        });
        let mut bytes = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut bytes)
            .encode_frames(frames)
            .expect("GIF encodes");
        let decoded = decode_ok(&bytes);
        assert_eq!(decoded.format, ImageFormat::Gif);
        assert!(decoded.image.pixels().all(|pixel| pixel.0 == RED));
    }

    #[test]
    fn greyscale_png_becomes_rgb() {
        let grey = GrayImage::from_pixel(5, 3, Luma([77]));
        let decoded = decode_ok(&encode(DynamicImage::ImageLuma8(grey), ImageFormat::Png));
        assert!(decoded.image.pixels().all(|pixel| pixel.0 == [77, 77, 77]));
    }

    #[test]
    fn sixteen_bit_png_becomes_eight_bit() {
        let deep = image::ImageBuffer::<Rgb<u16>, _>::from_pixel(4, 4, Rgb([65535, 32896, 0]));
        let decoded = decode_ok(&encode(DynamicImage::ImageRgb16(deep), ImageFormat::Png));
        assert_eq!(decoded.image.get_pixel(0, 0).0, [255, 128, 0]);
    }

    #[test]
    fn transparency_is_composited_over_white() {
        let rgba = RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([0, 0, 200, 128])
            }
        });
        let decoded = decode_ok(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png));
        assert_eq!(decoded.image.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(decoded.image.get_pixel(1, 0).0, [127, 127, 227]);

        let grey_alpha = image::GrayAlphaImage::from_pixel(1, 1, image::LumaA([0, 0]));
        let decoded = decode_ok(&encode(
            DynamicImage::ImageLumaA8(grey_alpha),
            ImageFormat::Png,
        ));
        assert_eq!(decoded.image.get_pixel(0, 0).0, [255, 255, 255]);
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        let (width, height) = (16u16, 8u16);
        // jpeg-encoder takes ink amounts (255 = full ink) and stores them inverted behind an
        // Adobe APP14 marker, as Photoshop does.
        let cyan: Vec<u8> = (0..usize::from(width) * usize::from(height))
            .flat_map(|_| [255, 0, 0, 0])
            .collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&cyan, width, height, jpeg_encoder::ColorType::Cmyk)
            .expect("CMYK JPEG encodes");

        let decoded = decode_ok(&bytes);
        assert_eq!(decoded.image.dimensions(), (16, 8));
        let [r, g, b] = decoded.image.get_pixel(8, 4).0;
        assert!(
            r < 40 && g > 215 && b > 215,
            "expected cyan, got {:?}",
            [r, g, b]
        );
    }
}
