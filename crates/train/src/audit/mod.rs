//! `bestiary dataset audit`: finds, before anyone trains on a dataset, the photos whose label is
//! probably wrong, photos of none of the classes, exact and near duplicates (and those across
//! the train/validation split), class imbalance, corrupt files and size outliers, and gives the
//! cross-validated accuracy of a frozen-head model on it.
//!
//! Everything is computed from the frozen ImageNet EfficientNet-Lite0's pooled features, exactly
//! as transfer training computes them, cached in a work folder so that a second audit of the
//! same photos runs no backbone.

pub mod cross_validation;
pub mod duplicates;
pub mod health;
pub mod label_issues;
pub mod photos;
pub mod report;
pub mod report_html;
pub mod report_text;

use std::time::Instant;

use bestiary_dataset::{Dataset, ImageCache, Sample, SkippedFile};
use bestiary_model::calibration::{self, Calibration, softmax_at};
use bestiary_model::{ModelRepository, resolve};
use bestiary_networks::efficientnet::{EfficientNetLite0, FEATURES};
use bestiary_networks::stored::StoredModel;
use bestiary_networks::{ArchitectureConfig, Classifier};
use bestiary_storage::{Store, StoreOptions};
use burn::prelude::*;

use crate::config::{OptimizerKind, Schedule, TrainConfig};
use crate::error::{Result, TrainError};
use crate::transfer::{FeatureCache, decode_cache, encode_cache, features, load_backbone};

use self::cross_validation::{accuracy, argmax, out_of_fold};
use self::duplicates::{
    DuplicateKind, MAX_NEAR_DUPLICATE_PHOTOS, NEAR_DUPLICATE_SIMILARITY, duplicate_groups,
    similar_pairs,
};
use self::label_issues::{Ranking, find_label_issues};
use self::photos::{photo_facts, photo_key, read_photo_cache, write_photo_cache};
pub use self::report::{
    AuditReport, AuditSummary, ClassResult, DuplicateGroupReport, GroupMember, Reason, Suspect,
};

/// Where `load_backbone` imports the ImageNet model into the work folder (its `IMPORTED_NAME`).
const IMPORTED_BACKBONE: &str = "efficientnet-lite0";

/// The default work folder: `audit` beside the loader's image cache (`$BESTIARY_CACHE_DIR`,
/// else the user's cache folder), as `import` keeps its wheels beside it.
pub fn default_work_dir() -> std::path::PathBuf {
    let images = ImageCache::default_dir();
    images
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(images)
        .join("audit")
}

/// What an audit does, besides which dataset.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The recipe of every fold's head (epochs, batch size, AdamW learning rate and cosine
    /// schedule, weight decay, label smoothing, seed), and in `pretrained` the backbone, as
    /// `train --arch efficientnet-lite0` takes them.
    pub head: TrainConfig,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// A Bestiary EfficientNet-Lite0 model of the same classes whose backbone computes the
    /// features and whose head and stored "unknown" detector judge the photos.
    pub model: Option<String>,
    pub ranking: Ranking,
    pub near_duplicate_similarity: f32,
    /// Share of the photos the out-of-fold "unknown" detector accepts.
    pub acceptance: f64,
    /// Photos read at once for hashing.
    pub concurrency: usize,
}

impl AuditConfig {
    /// The defaults of `bestiary dataset audit`: 5 folds, heads trained as `train --arch
    /// efficientnet-lite0 --epochs 30 --lr 5e-3` trains them, ranked by self-confidence.
    pub fn new(seed: u64) -> Self {
        Self {
            head: head_recipe(seed),
            folds: 5,
            model: None,
            ranking: Ranking::SelfConfidence,
            near_duplicate_similarity: NEAR_DUPLICATE_SIMILARITY,
            acceptance: calibration::DEFAULT_ACCEPTANCE,
            concurrency: 32,
        }
    }
}

/// The transfer head's recipe as `bestiary train` defaults it, with the epochs and learning
/// rate the README's transfer example uses. Built from its serialised form so that the
/// optional settings other features add to `TrainConfig` keep their defaults (off).
pub fn head_recipe(seed: u64) -> TrainConfig {
    let architecture = ArchitectureConfig::from_name("efficientnet-lite0", 0, 0)
        .expect("efficientnet-lite0 is an architecture");
    serde_json::from_value(serde_json::json!({
        "architecture": architecture,
        "image_size": bestiary_networks::efficientnet::IMAGE_SIZE,
        "epochs": 30,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "weight_decay": 1e-4,
        "optimizer": OptimizerKind::AdamW,
        "momentum": 0.9,
        "schedule": Schedule::Cosine,
        "warmup_epochs": 1.0,
        "label_smoothing": 0.1,
        "augment": false,
        "patience": null,
        "balance_classes": false,
        "seed": seed,
    }))
    .expect("the head recipe is a TrainConfig")
}

/// Audits `dataset`. `work` keeps the feature and photo caches (and the imported ImageNet
/// model when no `--pretrained` is given); `image_cache` is the loader's.
pub async fn audit(
    config: &AuditConfig,
    dataset: &Dataset,
    work: &Store,
    options: &StoreOptions,
    image_cache: Option<ImageCache>,
) -> Result<AuditReport> {
    let started = Instant::now();
    let classes = dataset.classes.len();
    let samples: Vec<&Sample> = dataset.train.iter().chain(&dataset.validation).collect();
    let is_validation: Vec<bool> = (0..samples.len())
        .map(|i| i >= dataset.train.len())
        .collect();

    let gathered = gather(config, dataset, &samples, work, options, image_cache).await?;
    let (rows, facts, judge) = (gathered.rows, gathered.facts, gathered.judge);
    let (missing, photos_read) = (gathered.features_computed, gathered.photos_read);

    let audited: Vec<usize> = (0..samples.len()).filter(|&i| rows[i].is_some()).collect();
    let labels: Vec<usize> = audited.iter().map(|&i| samples[i].label).collect();
    if audited.len() < config.folds.max(2) * 2 {
        return Err(TrainError::Invalid(format!(
            "only {} readable photos: too few to cross-validate in {} folds",
            audited.len(),
            config.folds
        )));
    }
    let matrix: Vec<f32> = audited
        .iter()
        .flat_map(|&i| {
            rows[i]
                .as_ref()
                .expect("audited photos have features")
                .clone()
        })
        .collect();

    let oof = out_of_fold(
        &matrix,
        FEATURES,
        &labels,
        classes,
        None,
        config.folds,
        &config.head,
    );
    let probabilities: Vec<Vec<f32>> = oof.logits.iter().map(|r| softmax_at(r, 1.0)).collect();
    let (overall, per_class) = accuracy(&oof.logits, &labels, classes);
    let fitted = calibration::fit(&oof.logits, &labels, config.acceptance);
    let issues = find_label_issues(&probabilities, &labels, classes, config.ranking);

    // "None of the classes": the model's own detector when one is given, else the out-of-fold one.
    let (verdicts, detector) =
        unknown_verdicts(judge.as_ref(), fitted.as_ref(), &oof.logits, &matrix);

    let hashes: Vec<&str> = facts.iter().map(|f| f.content_hash.as_str()).collect();
    let near_searched = audited.len() <= MAX_NEAR_DUPLICATE_PHOTOS;
    let similar: Vec<(usize, usize, f32)> = if near_searched {
        similar_pairs(
            &matrix,
            FEATURES,
            config.near_duplicate_similarity,
            &Device::flex(),
        )
        .into_iter()
        .map(|(a, b, s)| (audited[a], audited[b], s))
        .collect()
    } else {
        Vec::new()
    };
    let groups = duplicate_groups(&hashes, &similar);
    let sizes: Vec<Option<(u32, u32)>> = facts.iter().map(|f| f.width.zip(f.height)).collect();
    let size_outliers = health::size_outliers(&sizes);

    let mut builder = report::Builder::new(dataset, &samples, &is_validation);
    for issue in &issues {
        builder.label_issue(audited[issue.photo], issue, config.ranking);
    }
    for (row, verdict) in verdicts.iter().enumerate() {
        if let Some(verdict) = verdict {
            builder.unknown(audited[row], verdict);
        }
    }
    for group in &groups {
        builder.duplicates(group);
    }
    for (i, fact) in facts.iter().enumerate() {
        if let Some((code, reason)) = &fact.bad {
            builder.corrupt(i, code, reason);
        }
    }
    for outlier in &size_outliers {
        builder.size_outlier(outlier);
    }

    let summary = AuditSummary {
        photos: samples.len(),
        audited: audited.len(),
        folds: oof.folds,
        cross_validated_accuracy: overall,
        temperature: fitted.as_ref().map(|c| c.temperature),
        ece_before: fitted.as_ref().map(|c| c.ece_before),
        ece_after: fitted.as_ref().map(|c| c.ece_after),
        detector,
        ranking: config.ranking,
        label_issues: issues.len(),
        unknown: verdicts.iter().flatten().count(),
        exact_duplicate_groups: groups
            .iter()
            .filter(|g| g.kind == DuplicateKind::Exact)
            .count(),
        near_duplicate_groups: groups
            .iter()
            .filter(|g| g.kind == DuplicateKind::Near)
            .count(),
        leakage_groups: groups
            .iter()
            .filter(|g| {
                g.photos.iter().any(|&p| is_validation[p])
                    && g.photos.iter().any(|&p| !is_validation[p])
            })
            .count(),
        near_duplicate_similarity: near_searched.then_some(config.near_duplicate_similarity),
        bad_files: facts.iter().filter(|f| f.bad.is_some()).count(),
        size_outliers: size_outliers.len(),
        features_computed: missing,
        photos_read,
        seconds: started.elapsed().as_secs_f64(),
    };
    let class_results = (0..classes)
        .map(|c| ClassResult {
            class: dataset.classes[c].clone(),
            photos: labels.iter().filter(|&&l| l == c).count(),
            cross_validated_accuracy: per_class[c],
            label_issues: issues.iter().filter(|i| i.given == c).count(),
        })
        .collect();
    Ok(builder.finish(
        summary,
        class_results,
        health::imbalance(&dataset.classes, &labels),
    ))
}

/// What the audit reads about the photos: features (cached per backbone in `work`), facts
/// (hash, size, readability; cached too) and the `--model` judge.
pub struct Gathered {
    /// Per photo of `samples`: its features, `None` for a photo that cannot be read.
    pub rows: Vec<Option<Vec<f32>>>,
    pub facts: Vec<photos::PhotoFacts>,
    pub features_computed: usize,
    pub photos_read: usize,
    judge: Option<Judge>,
}

/// The features and facts of `samples`, computing only what `work` has not cached; the
/// backbone is not even loaded when every feature is cached.
pub async fn gather(
    config: &AuditConfig,
    dataset: &Dataset,
    samples: &[&Sample],
    work: &Store,
    options: &StoreOptions,
    image_cache: Option<ImageCache>,
) -> Result<Gathered> {
    let mut photo_cache = read_photo_cache(work).await?;
    let (mut facts, photos_read) =
        photo_facts(dataset, samples, &mut photo_cache, config.concurrency).await;

    // The network whose features are audited, and the cache of its features.
    let work_repository = ModelRepository::open(&work.url().display(), options)?;
    let judge = match &config.model {
        Some(url) => Some(load_judge(url, dataset, options).await?),
        None => None,
    };
    let identity = match &judge {
        Some(judge) => Some(judge.identity.clone()),
        None => backbone_identity(&config.head, &work_repository, options).await?,
    };
    let mut feature_cache = match &identity {
        Some(identity) => read_feature_cache(work, identity).await?,
        None => FeatureCache::new(),
    };
    let readable: Vec<usize> = (0..samples.len())
        .filter(|&i| facts[i].bad.is_none())
        .collect();
    let cached_row = |i: usize, cache: &FeatureCache| {
        photo_key(dataset, samples[i]).and_then(|key| cache.get(&key).cloned())
    };
    let missing = readable
        .iter()
        .filter(|&&i| cached_row(i, &feature_cache).is_none())
        .count();
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; samples.len()];
    let mut bad_files: Vec<SkippedFile> = Vec::new();
    if missing == 0 {
        for &i in &readable {
            rows[i] = cached_row(i, &feature_cache);
        }
    } else {
        let backbone = match &judge {
            Some(judge) => judge.network.clone(),
            None => load_backbone(&config.head, &work_repository, options).await?,
        };
        let owned: Vec<Sample> = readable.iter().map(|&i| samples[i].clone()).collect();
        let computed = features(
            &backbone,
            dataset,
            &owned,
            &config.head,
            &mut feature_cache,
            image_cache,
            &mut bad_files,
            None,
        )
        .await?;
        for (&i, row) in readable.iter().zip(computed) {
            rows[i] = row;
        }
        // The default backbone is imported on first use: only now has it a version.
        let identity = match identity {
            Some(identity) => identity,
            None => backbone_identity(&config.head, &work_repository, options)
                .await?
                .ok_or_else(|| {
                    TrainError::Invalid("the imported backbone has no version".into())
                })?,
        };
        work.put(&feature_file(&identity), encode_cache(&feature_cache))
            .await?;
    }
    // What the loader could not decode is remembered, so that the next audit skips it too.
    for file in &bad_files {
        if let Some(i) = samples.iter().position(|s| s.id == file.id) {
            facts[i].bad = Some((file.code.clone(), file.reason.clone()));
            if let Some(key) = photo_key(dataset, samples[i]) {
                photo_cache.insert(format!("{key:032x}"), facts[i].clone());
            }
        }
    }
    if photos_read > 0 || !bad_files.is_empty() {
        write_photo_cache(work, &photo_cache).await?;
    }

    Ok(Gathered {
        rows,
        facts,
        features_computed: missing,
        photos_read,
        judge,
    })
}

/// A `--model` that judges the photos: its network and calibration.
struct Judge {
    url: String,
    identity: String,
    network: EfficientNetLite0,
    calibration: Option<Calibration>,
}

async fn load_judge(url: &str, dataset: &Dataset, options: &StoreOptions) -> Result<Judge> {
    let stored = StoredModel::load(url, options).await?;
    if stored.metadata.classes != dataset.classes {
        return Err(TrainError::Invalid(format!(
            "--model {url} has the classes {:?}, the dataset {:?}: audit with a model of the same classes",
            stored.metadata.classes, dataset.classes
        )));
    }
    let network = match stored.network(&Device::flex())? {
        Classifier::EfficientnetLite0(network) => network,
        _ => {
            return Err(TrainError::Invalid(format!(
                "--model {url} is a {}; the audit needs an EfficientNet-Lite0 model",
                stored.metadata.architecture
            )));
        }
    };
    Ok(Judge {
        url: url.to_string(),
        identity: format!(
            "model\0{}\0{}\0{}",
            stored.repository.store().url().display(),
            stored.name,
            stored.version
        ),
        network,
        calibration: stored.metadata.calibration.clone(),
    })
}

/// What identifies the backbone `recipe.pretrained` names, without loading it: the feature
/// cache is kept per backbone. `None` when the default ImageNet model is not imported yet.
async fn backbone_identity(
    recipe: &TrainConfig,
    work: &ModelRepository,
    options: &StoreOptions,
) -> Result<Option<String>> {
    Ok(match &recipe.pretrained {
        Some(path) if path.ends_with(".safetensors") => {
            let (store, key) = Store::open_object(path, options)?;
            let info = store.head(&key).await?;
            Some(format!(
                "safetensors\0{}\0{}\0{}",
                store.url_of(&key),
                info.etag.unwrap_or_default(),
                info.size
            ))
        }
        Some(url) => {
            let (repository, name, version) = resolve(url, options).await?;
            Some(format!(
                "model\0{}\0{name}\0{version}",
                repository.store().url().display()
            ))
        }
        None => work.latest(IMPORTED_BACKBONE).await?.map(|version| {
            format!(
                "model\0{}\0{IMPORTED_BACKBONE}\0{version}",
                work.store().url().display()
            )
        }),
    })
}

/// The feature cache of one backbone in the work folder.
fn feature_file(identity: &str) -> String {
    format!(
        "features-{:016x}.bin",
        xxhash_rust::xxh3::xxh3_64(identity.as_bytes())
    )
}

async fn read_feature_cache(work: &Store, identity: &str) -> Result<FeatureCache> {
    match work.get(&feature_file(identity)).await {
        Ok(bytes) => Ok(decode_cache(&bytes)),
        Err(e) if e.is_not_found() => Ok(FeatureCache::new()),
        Err(e) => Err(e.into()),
    }
}

/// A photo the detector rejects: its score, the threshold, and the closest class.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownVerdict {
    pub score: f32,
    pub threshold: f32,
    pub closest: usize,
}

/// Each audited photo's rejection (`None`: accepted), and which detector decided.
fn unknown_verdicts(
    judge: Option<&Judge>,
    fitted: Option<&Calibration>,
    oof_logits: &[Vec<f32>],
    matrix: &[f32],
) -> (Vec<Option<UnknownVerdict>>, String) {
    let judged = |logits: &[Vec<f32>], calibration: &Calibration| -> Vec<Option<UnknownVerdict>> {
        logits
            .iter()
            .map(|row| {
                let (probabilities, unknown) = calibration.apply(row);
                let threshold = calibration.unknown.as_ref()?.threshold;
                match unknown {
                    Some((true, score)) => Some(UnknownVerdict {
                        score,
                        threshold,
                        closest: argmax(&probabilities),
                    }),
                    _ => None,
                }
            })
            .collect()
    };
    if let Some(judge) = judge
        && let Some(calibration) = judge.calibration.as_ref().filter(|c| c.unknown.is_some())
    {
        let device = Device::flex();
        let rows = matrix.len() / FEATURES;
        let features =
            Tensor::<2>::from_data(TensorData::new(matrix.to_vec(), [rows, FEATURES]), &device);
        let values: Vec<f32> = judge
            .network
            .logits(features)
            .into_data()
            .try_to_vec()
            .expect("logits are f32");
        let classes = values.len() / rows.max(1);
        let logits: Vec<Vec<f32>> = values.chunks(classes).map(<[f32]>::to_vec).collect();
        let detector = calibration.unknown.as_ref().expect("checked");
        return (
            judged(&logits, calibration),
            format!(
                "{} of --model {} (threshold {:.3}, {:.0}% acceptance on its validation photos)",
                detector.method,
                judge.url,
                detector.threshold,
                detector.acceptance * 100.0
            ),
        );
    }
    match fitted {
        Some(calibration) => {
            let detector = calibration
                .unknown
                .as_ref()
                .expect("fit always adds a detector");
            let note = if judge.is_some() {
                " (--model has no stored detector)"
            } else {
                ""
            };
            (
                judged(oof_logits, calibration),
                format!(
                    "out-of-fold {} at temperature {:.2} (threshold {:.3}, {:.0}% acceptance){note}",
                    detector.method,
                    calibration.temperature,
                    detector.threshold,
                    detector.acceptance * 100.0
                ),
            )
        }
        None => (
            vec![None; oof_logits.len()],
            "none: too few photos to fit a detector".into(),
        ),
    }
}
