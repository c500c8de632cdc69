//! The dataset's shape: class imbalance (counts, the largest-to-smallest ratio, classes far
//! below the median) and photos whose size is far from the rest (tiny, or a shorter side or
//! aspect ratio that is an outlier by the modified z-score of Iglewicz & Hoaglin).

use serde::Serialize;

/// A class with fewer photos than this share of the median class is called out.
pub const UNDERREPRESENTED_SHARE: f64 = 0.5;
/// Photos whose shorter side is below this are tiny: the 224-pixel network input is then
/// more than 3.5× upscaled blur.
pub const TINY_SIDE: u32 = 64;
/// Modified z-score (on the logarithm) from which a size is an outlier; 3.5 is Iglewicz and
/// Hoaglin's recommendation.
pub const OUTLIER_Z: f64 = 3.5;
/// Smallest spread assumed, in log units, so that a dataset of mostly one size does not make
/// every ordinary photo of another an outlier: with it a size or aspect ratio must be about 3.7×
/// off the median to stand out. On animals10 (mostly 300×225, some 640×640 and portraits) a
/// floor of 0.1 flagged 35 of 240 ordinary photos; 0.25 flags none.
const MIN_LOG_SPREAD: f64 = 0.25;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCount {
    pub class: String,
    pub photos: usize,
}

/// How evenly the photos are spread over the classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Imbalance {
    pub counts: Vec<ClassCount>,
    pub median: f64,
    /// Largest class over smallest; `None` when a class has no photos.
    pub max_min_ratio: Option<f64>,
    /// Classes with fewer than [`UNDERREPRESENTED_SHARE`] of the median.
    pub underrepresented: Vec<String>,
}

/// Imbalance of `labels` over `classes`.
pub fn imbalance(classes: &[String], labels: &[usize]) -> Imbalance {
    let mut photos = vec![0usize; classes.len()];
    for &label in labels {
        photos[label] += 1;
    }
    let median = median(photos.iter().map(|&c| c as f64).collect());
    let (min, max) = (
        photos.iter().copied().min().unwrap_or(0),
        photos.iter().copied().max().unwrap_or(0),
    );
    Imbalance {
        counts: classes
            .iter()
            .zip(&photos)
            .map(|(class, &photos)| ClassCount {
                class: class.clone(),
                photos,
            })
            .collect(),
        median,
        max_min_ratio: (min > 0).then(|| max as f64 / min as f64),
        underrepresented: classes
            .iter()
            .zip(&photos)
            .filter(|&(_, &count)| (count as f64) < UNDERREPRESENTED_SHARE * median)
            .map(|(class, _)| class.clone())
            .collect(),
    }
}

/// A photo whose size stands out.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeOutlier {
    pub photo: usize,
    /// How far out, in [0, 1]: 1 for a tiny photo, else the z-score over 10, at most 1.
    pub score: f64,
    pub detail: String,
}

/// Tiny photos and photos whose shorter side or aspect ratio (width / height) is an outlier,
/// among `sizes` (`None`: unknown, skipped).
pub fn size_outliers(sizes: &[Option<(u32, u32)>]) -> Vec<SizeOutlier> {
    let known: Vec<(u32, u32)> = sizes.iter().flatten().copied().collect();
    let log_side = |(w, h): (u32, u32)| f64::from(w.min(h).max(1)).ln();
    let log_aspect = |(w, h): (u32, u32)| (f64::from(w.max(1)) / f64::from(h.max(1))).ln();
    let side_scale = RobustScale::of(known.iter().map(|&s| log_side(s)).collect());
    let aspect_scale = RobustScale::of(known.iter().map(|&s| log_aspect(s)).collect());
    let mut outliers: Vec<SizeOutlier> = sizes
        .iter()
        .enumerate()
        .filter_map(|(photo, size)| {
            let (w, h) = (*size)?;
            if w.min(h) < TINY_SIDE {
                return Some(SizeOutlier {
                    photo,
                    score: 1.0,
                    detail: format!("tiny: {w}×{h} px, shorter side below {TINY_SIDE} px"),
                });
            }
            let side_z = side_scale.z(log_side((w, h)));
            let aspect_z = aspect_scale.z(log_aspect((w, h)));
            let typical_side = side_scale.median.exp().round();
            let typical_aspect = aspect_scale.median.exp();
            if side_z.abs() >= aspect_z.abs() && side_z.abs() > OUTLIER_Z {
                Some(SizeOutlier {
                    photo,
                    score: (side_z.abs() / 10.0).min(1.0),
                    detail: format!(
                        "{w}×{h} px: shorter side {} px against a median of {typical_side} (z = {side_z:.1})",
                        w.min(h)
                    ),
                })
            } else if aspect_z.abs() > OUTLIER_Z {
                Some(SizeOutlier {
                    photo,
                    score: (aspect_z.abs() / 10.0).min(1.0),
                    detail: format!(
                        "{w}×{h} px: aspect ratio {:.2} against a median of {typical_aspect:.2} (z = {aspect_z:.1})",
                        f64::from(w) / f64::from(h)
                    ),
                })
            } else {
                None
            }
        })
        .collect();
    outliers.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.photo.cmp(&b.photo)));
    outliers
}

/// Median and median absolute deviation, for modified z-scores.
struct RobustScale {
    median: f64,
    spread: f64,
}

impl RobustScale {
    fn of(values: Vec<f64>) -> Self {
        let centre = median(values.clone());
        let deviation = median(values.iter().map(|v| (v - centre).abs()).collect());
        Self {
            median: centre,
            spread: deviation.max(MIN_LOG_SPREAD),
        }
    }

    /// Iglewicz and Hoaglin's modified z-score: 0.6745 (x − median) / MAD.
    fn z(&self, value: f64) -> f64 {
        0.6745 * (value - self.median) / self.spread
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imbalance_names_the_small_classes() {
        let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let labels: Vec<usize> = [vec![0; 20], vec![1; 18], vec![2; 4]].concat();
        let report = imbalance(&classes, &labels);
        assert_eq!(report.median, 18.0);
        assert_eq!(report.max_min_ratio, Some(5.0));
        assert_eq!(report.underrepresented, vec!["c".to_string()]);
        assert_eq!(imbalance(&classes, &[0, 1]).max_min_ratio, None);
    }

    #[test]
    fn tiny_huge_and_oddly_shaped_photos_stand_out_and_ordinary_ones_do_not() {
        let mut sizes: Vec<Option<(u32, u32)>> = (0..40)
            .map(|i| Some((300 + i * 5, 200 + (i % 7) * 10)))
            .collect();
        sizes.push(Some((40, 30))); // 40: tiny
        sizes.push(Some((4000, 3000))); // 41: far larger
        sizes.push(Some((1200, 150))); // 42: a panorama
        sizes.push(None);
        let outliers = size_outliers(&sizes);
        let flagged: Vec<usize> = outliers.iter().map(|o| o.photo).collect();
        assert_eq!(flagged[0], 40, "{outliers:?}");
        let mut rest = flagged[1..].to_vec();
        rest.sort();
        assert_eq!(rest, vec![41, 42], "{outliers:?}");
        assert!(outliers[1..].iter().any(|o| o.detail.contains("aspect")));
    }
}
