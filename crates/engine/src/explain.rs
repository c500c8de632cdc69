//! Where the model looked: class activation maps (CAM) of one photo for its predicted or a
//! requested class, from the engines' `class_activation` output.
//!
//! All of Bestiary's networks end in global average pooling and a linear head, so applying the
//! head at every position of the last feature map gives, per class, a map whose mean is that
//! class's logit exactly (Zhou et al. 2016). No gradients are needed, so every engine can do it.

use bestiary_dataset::transform::evaluation_crop;
use image::RgbImage;

use crate::error::EngineError;
use crate::model::LoadedModel;
use crate::overlay::{MAX_OVERLAY_SIDE, encode_png, heat_overlay};
use crate::prediction::Prediction;
use crate::preprocess::{ImageInfo, Preprocessor};

/// What an engine returns for one image: its logits and every class's activation map.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassActivation {
    /// One logit per class, as [`crate::Engine::infer`] gives them.
    pub logits: Vec<f32>,
    /// `classes × height × width`, row-major: the head applied at every position of the
    /// last feature map, in logit units.
    pub maps: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl ClassActivation {
    /// The map of class `class`, row-major.
    pub fn map(&self, class: usize) -> &[f32] {
        let cells = self.height * self.width;
        &self.maps[class * cells..(class + 1) * cells]
    }
}

/// The explanation of one image for one class.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The model's answer for the image, as `classify` gives it.
    pub prediction: Prediction,
    /// The class explained: the most probable one, or the one asked for.
    pub class_index: usize,
    pub label: String,
    /// That class's probability (calibrated when the model has a temperature).
    pub score: f32,
    /// Its activation map, `grid_height × grid_width` row-major, in logit units (before the
    /// temperature): positive where the region raised the class's logit. Its mean is the logit.
    pub grid: Vec<f32>,
    pub grid_height: usize,
    pub grid_width: usize,
}

/// An explanation of a photo with its picture: the heat map over the photo.
#[derive(Debug, Clone)]
pub struct PhotoExplanation {
    pub explanation: Explanation,
    pub info: ImageInfo,
    /// The photo (upright, shrunk to at most [`MAX_OVERLAY_SIDE`] on its longer side) with the
    /// heat map blended over the square the model saw; outside it the photo is dimmed.
    pub overlay: RgbImage,
    /// `overlay` as PNG.
    pub overlay_png: Vec<u8>,
    /// The square the model saw, `[left, top, width, height]` in `overlay` pixels.
    pub crop: [f64; 4],
}

impl LoadedModel {
    /// Whether this model's engine gives class activation maps.
    pub fn explains(&self) -> bool {
        self.engine.explains()
    }

    /// The explanation of one preprocessed image (`input_len()` floats) for `label`, or for
    /// its most probable class.
    ///
    /// # Errors
    /// [`EngineError::UnknownClass`] for a label the model lacks (checked before inference),
    /// [`EngineError::NoClassActivation`] for a model exported without the maps, and engine
    /// failures.
    pub fn explain_tensor(
        &self,
        input: &[f32],
        label: Option<&str>,
    ) -> Result<Explanation, EngineError> {
        let classes = &self.metadata.classes;
        // Checked first: a misspelt label should not cost an inference.
        let requested = label
            .map(|label| {
                classes
                    .iter()
                    .position(|c| c == label)
                    .ok_or_else(|| EngineError::UnknownClass {
                        label: label.to_owned(),
                        classes: classes.clone(),
                    })
            })
            .transpose()?;
        let activation = self.engine.explain(input).map_err(|error| match error {
            EngineError::NoClassActivation { .. } => EngineError::NoClassActivation {
                model: self.source.clone(),
            },
            other => other,
        })?;
        let cells = activation.height * activation.width;
        if activation.logits.len() != classes.len()
            || cells == 0
            || activation.maps.len() != classes.len() * cells
        {
            return Err(EngineError::InvalidModel {
                model: self.source.clone(),
                reason: format!(
                    "the network returned {} logits and {} map values ({}×{}) for {} classes",
                    activation.logits.len(),
                    activation.maps.len(),
                    activation.height,
                    activation.width,
                    classes.len()
                ),
            });
        }
        let prediction = Prediction::calibrated(
            &activation.logits,
            classes,
            classes.len(),
            self.metadata.calibration.as_ref(),
            self.label_unknown,
        );
        // The top class even when the detector calls the photo unknown: the map then shows
        // what the model half-recognised.
        let class_index = requested.unwrap_or(prediction.class_index);
        Ok(Explanation {
            label: classes[class_index].clone(),
            score: prediction.probabilities[class_index],
            class_index,
            grid: activation.map(class_index).to_vec(),
            grid_height: activation.height,
            grid_width: activation.width,
            prediction,
        })
    }

    /// Decodes `bytes` as `preprocessor` does for classification (the same tensor, so the same
    /// prediction), explains it for `label` or its most probable class, and draws the map over
    /// the photo. Runs the network once; meant for a blocking thread.
    ///
    /// # Errors
    /// As [`Preprocessor::decode`] and [`LoadedModel::explain_tensor`].
    pub fn explain_photo(
        &self,
        preprocessor: &Preprocessor,
        bytes: &[u8],
        label: Option<&str>,
    ) -> Result<PhotoExplanation, EngineError> {
        let (photo, info) = preprocessor.decode(bytes)?;
        let mut input = vec![0.0; preprocessor.input_len()];
        preprocessor.preprocess_image(photo.clone(), &mut input)?;
        let explanation = self.explain_tensor(&input, label)?;
        let spec = preprocessor.input();
        let crop = evaluation_crop(
            photo.dimensions(),
            preprocessor.resize_target(),
            spec.image_size,
            spec.crop_fraction,
        );
        let (overlay, crop) = heat_overlay(
            &photo,
            crop,
            &explanation.grid,
            explanation.grid_height,
            explanation.grid_width,
            MAX_OVERLAY_SIDE,
        );
        let overlay_png = encode_png(&overlay)?;
        Ok(PhotoExplanation {
            explanation,
            info,
            overlay,
            overlay_png,
            crop,
        })
    }
}
