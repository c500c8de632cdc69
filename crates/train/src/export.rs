//! Writes a trained network as an ONNX inference graph (batch norm folded into the convolutions),
//! with `logits`, `probabilities`, `features` and `class_activation` outputs, for the serving
//! engines.

use bestiary_model::ModelMetadata;
use bestiary_model::onnx::{CLASS_ACTIVATION, ExportError, GraphBuilder, Value, fold_batch_norm};
use bestiary_networks::arch::{BasicBlock, Classifier, ConvBnRelu, Resnet, SeedCnn};
use bestiary_networks::efficientnet::{self, EfficientNetLite0, MbConv};
use bestiary_networks::imagenet_prior::ImagenetPrior;
use burn::prelude::*;

/// Name of the graph input: float32 `[N, 3, size, size]`, normalised as the metadata says.
pub const INPUT: &str = "input";

/// The values the head produces, to be declared as graph outputs.
struct HeadOutputs {
    features: Value,
    logits: Value,
    class_activation: Value,
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .try_to_vec::<f32>()
        .expect("weights are f32")
}

/// Adds `unit`'s convolution with its batch norm folded in, and the ReLU when `relu`.
fn conv_bn(
    graph: &mut GraphBuilder,
    x: &Value,
    unit: &ConvBnRelu,
    relu: bool,
) -> Result<Value, ExportError> {
    let activation = if relu {
        Activation::Relu
    } else {
        Activation::None
    };
    folded_conv(graph, x, &unit.conv, &unit.norm, activation)
}

/// Global average pooling and the linear head on the feature map `x`, and beside them the head
/// as a 1×1 convolution of `x`: the class activation maps. Pooling and the head are both
/// linear, so the maps' spatial mean equals the logits.
fn head(graph: &mut GraphBuilder, x: &Value, head: &burn::nn::Linear) -> HeadOutputs {
    let pooled = graph.global_average_pool(x);
    let features = graph.flatten(&pooled);
    let [inputs, outputs] = head.weight.val().dims();
    let bias = head.bias.as_ref().map(|b| values(b.val()));
    let weight = values(head.weight.val());
    let logits = graph.gemm(&features, &weight, inputs, outputs, bias.as_deref());
    // burn's Linear weight is [in, out]; a convolution's is [out, in, 1, 1].
    let transposed: Vec<f32> = (0..outputs)
        .flat_map(|out| (0..inputs).map(move |input| (input, out)))
        .map(|(input, out)| weight[input * outputs + out])
        .collect();
    let class_activation = graph.conv(
        x,
        &transposed,
        [outputs, inputs, 1, 1],
        bias.as_deref(),
        [1, 1],
        [0; 4],
        1,
    );
    HeadOutputs {
        features,
        logits,
        class_activation,
    }
}

/// Declares the head's outputs in their fixed order: `logits`, `probabilities`, `features`,
/// `class_activation`.
///
/// The shapes come from the builder, which checked every layer; a value it could not shape
/// (after a failed layer) is declared with an empty shape, and `finish` reports the first error.
fn declare_outputs(graph: &mut GraphBuilder, outputs: &HeadOutputs) {
    let probabilities = graph.softmax(&outputs.logits, 1);
    let size_of = |graph: &GraphBuilder, value: &Value| {
        graph
            .shape(value)
            .and_then(|s| s.first().copied())
            .unwrap_or(0)
    };
    let classes = size_of(graph, &outputs.logits);
    let feature_size = size_of(graph, &outputs.features);
    let map_shape = graph
        .shape(&outputs.class_activation)
        .map(<[i64]>::to_vec)
        .unwrap_or_default();
    graph.output(&outputs.logits, "logits", classes);
    graph.output(&probabilities, "probabilities", classes);
    graph.output(&outputs.features, "features", feature_size);
    graph.output_shaped(&outputs.class_activation, CLASS_ACTIVATION, &map_shape);
}

fn seed_cnn(graph: &mut GraphBuilder, net: &SeedCnn) -> Result<HeadOutputs, ExportError> {
    let mut x = graph.input();
    for block in &net.blocks {
        let y = conv_bn(graph, &x, block, true)?;
        x = graph.max_pool(&y, [2, 2], [2, 2], [0, 0, 0, 0]);
    }
    Ok(head(graph, &x, &net.head))
}

fn basic_block(
    graph: &mut GraphBuilder,
    x: &Value,
    block: &BasicBlock,
) -> Result<Value, ExportError> {
    let skip = match &block.projection {
        Some(projection) => conv_bn(graph, x, projection, false)?,
        None => x.clone(),
    };
    let first = conv_bn(graph, x, &block.first, true)?;
    let second = conv_bn(graph, &first, &block.second, false)?;
    let sum = graph.add(&second, &skip);
    Ok(graph.relu(&sum))
}

fn resnet(graph: &mut GraphBuilder, net: &Resnet) -> Result<HeadOutputs, ExportError> {
    let stem = conv_bn(graph, &graph.input(), &net.stem, true)?;
    let mut x = graph.max_pool(&stem, [3, 3], [2, 2], [1, 1, 1, 1]);
    for block in &net.blocks {
        x = basic_block(graph, &x, block)?;
    }
    Ok(head(graph, &x, &net.head))
}

/// The ONNX model of `model` (in inference mode) for inputs of `metadata.input.image_size`.
pub fn export_onnx(model: &Classifier, metadata: &ModelMetadata) -> Result<Vec<u8>, ExportError> {
    let size = metadata.input.image_size as i64;
    let mut graph = GraphBuilder::new(&metadata.name, INPUT, 3, size, size);
    let outputs = match model {
        Classifier::SeedCnn(net) => seed_cnn(&mut graph, net)?,
        Classifier::Resnet(net) => resnet(&mut graph, net)?,
        Classifier::EfficientnetLite0(net) => efficientnet_graph(&mut graph, net)?,
    };
    let classes = metadata.classes.len() as i64;
    if let Some(shape) = graph.shape(&outputs.logits)
        && shape != [classes]
    {
        return Err(ExportError::Invalid {
            context: "logits".into(),
            reason: format!("the head has {shape:?} outputs but the model has {classes} classes"),
        });
    }
    declare_outputs(&mut graph, &outputs);
    let classes_json = serde_json::to_string(&metadata.classes).expect("classes serialise");
    graph.finish(
        env!("CARGO_PKG_VERSION"),
        &[
            ("bestiary.model", &metadata.name),
            ("bestiary.version", &metadata.version),
            ("bestiary.classes", &classes_json),
        ],
    )
}

/// What follows a folded convolution.
#[derive(Clone, Copy)]
enum Activation {
    None,
    Relu,
    /// `Clip 0..6`.
    Relu6,
}

/// Adds `conv` with `norm` folded in (pads, stride and groups taken from the conv), then
/// `activation`.
fn folded_conv(
    graph: &mut GraphBuilder,
    x: &Value,
    conv: &burn::nn::conv::Conv2d,
    norm: &burn::nn::BatchNorm,
    activation: Activation,
) -> Result<Value, ExportError> {
    let weight = conv.weight.val();
    let shape = weight.dims();
    let bias = conv.bias.as_ref().map(|b| values(b.val()));
    let (weight, bias) = fold_batch_norm(
        &values(weight),
        shape,
        bias.as_deref(),
        &values(norm.gamma.val()),
        &values(norm.beta.val()),
        &values(norm.running_mean.value()),
        &values(norm.running_var.value()),
        norm.epsilon as f32,
    )?;
    let pads = match conv.padding {
        burn::nn::PaddingConfig2d::Explicit(top, left, bottom, right) => {
            [top, left, bottom, right].map(|p| p as i64)
        }
        burn::nn::PaddingConfig2d::Valid => [0; 4],
        burn::nn::PaddingConfig2d::Same => {
            return Err(ExportError::Invalid {
                context: "conv".into(),
                reason: "dynamic SAME padding is not exported; use explicit pads".into(),
            });
        }
    };
    let y = graph.conv(
        x,
        &weight,
        shape,
        Some(&bias),
        conv.stride.map(|s| s as i64),
        pads,
        conv.groups as i64,
    );
    Ok(match activation {
        Activation::None => y,
        Activation::Relu => graph.relu(&y),
        Activation::Relu6 => graph.clip(&y, 0.0, 6.0),
    })
}

/// [`folded_conv`] followed by ReLU6 when `relu6`: EfficientNet's unit.
fn conv_bn_clip(
    graph: &mut GraphBuilder,
    x: &Value,
    conv: &burn::nn::conv::Conv2d,
    norm: &burn::nn::BatchNorm,
    relu6: bool,
) -> Result<Value, ExportError> {
    let activation = if relu6 {
        Activation::Relu6
    } else {
        Activation::None
    };
    folded_conv(graph, x, conv, norm, activation)
}

fn mb_conv(graph: &mut GraphBuilder, x: &Value, block: &MbConv) -> Result<Value, ExportError> {
    let mut y = x.clone();
    if let (Some(conv), Some(norm)) = (&block.expand_conv, &block.bn0) {
        y = conv_bn_clip(graph, &y, conv, norm, true)?;
    }
    y = conv_bn_clip(graph, &y, &block.depthwise_conv, &block.bn1, true)?;
    y = conv_bn_clip(graph, &y, &block.project_conv, &block.bn2, false)?;
    Ok(if block.skip { graph.add(&y, x) } else { y })
}

/// EfficientNet-Lite0's layers from the graph input to the head's outputs.
fn efficientnet_graph(
    graph: &mut GraphBuilder,
    model: &EfficientNetLite0,
) -> Result<HeadOutputs, ExportError> {
    let input = graph.input();
    let mut x = conv_bn_clip(graph, &input, &model.conv_stem, &model.bn0, true)?;
    for block in &model.blocks {
        x = mb_conv(graph, &x, block)?;
    }
    x = conv_bn_clip(graph, &x, &model.conv_head, &model.bn1, true)?;
    let mut outputs = head(graph, &x, &model.fc);
    if let Some(prior) = &model.prior {
        outputs.logits = imagenet_prior(graph, &outputs.features, &outputs.logits, prior);
    }
    Ok(outputs)
}

/// `logits + w · log(softmax(imagenet(features)) · membership + ε)`, as `ImagenetPrior` computes
/// it. The class-activation output stays the trained head's alone: the prior is not linear in
/// the feature map.
fn imagenet_prior(
    graph: &mut GraphBuilder,
    features: &Value,
    logits: &Value,
    prior: &ImagenetPrior,
) -> Value {
    let [inputs, imagenet_classes] = prior.imagenet.weight.val().dims();
    let bias = prior.imagenet.bias.as_ref().map(|b| values(b.val()));
    let imagenet = graph.gemm(
        features,
        &values(prior.imagenet.weight.val()),
        inputs,
        imagenet_classes,
        bias.as_deref(),
    );
    let probabilities = graph.softmax(&imagenet, 1);
    let membership = prior.membership_values();
    let classes = membership.len() / imagenet_classes;
    let epsilon = vec![bestiary_networks::imagenet_prior::EPSILON; classes];
    let grouped = graph.gemm(
        &probabilities,
        &membership,
        imagenet_classes,
        classes,
        Some(&epsilon),
    );
    let log = graph.log(&grouped);
    // The weight as a diagonal matrix: one more tiny Gemm instead of a new Mul operator.
    let weight = prior.weight_value();
    let diagonal: Vec<f32> = (0..classes * classes)
        .map(|i| {
            if i / classes == i % classes {
                weight
            } else {
                0.0
            }
        })
        .collect();
    let weighted = graph.gemm(&log, &diagonal, classes, classes, None);
    graph.add(logits, &weighted)
}

/// The ONNX model of EfficientNet-Lite0 for `[N, 3, 224, 224]` inputs normalised as
/// `(pixel − 127) / 128`, with `logits`, `probabilities`, `features` (1280) and
/// `class_activation` (`[N, classes, 7, 7]`) outputs and batch norm folded into the convolutions.
pub fn export_efficientnet_onnx(
    model: &EfficientNetLite0,
    name: &str,
) -> Result<Vec<u8>, ExportError> {
    let size = efficientnet::IMAGE_SIZE as i64;
    let mut graph = GraphBuilder::new(name, INPUT, 3, size, size);
    let outputs = efficientnet_graph(&mut graph, model)?;
    declare_outputs(&mut graph, &outputs);
    graph.finish(
        env!("CARGO_PKG_VERSION"),
        &[
            ("bestiary.model", name),
            ("bestiary.architecture", "efficientnet-lite0"),
        ],
    )
}
