//! Writes a trained network as an ONNX inference graph (batch norm folded into the convolutions),
//! with `logits`, `probabilities` and `features` outputs, for the serving engines.

use bestiary_model::ModelMetadata;
use bestiary_model::onnx::{ExportError, GraphBuilder, Value, fold_batch_norm};
use burn::prelude::*;

use crate::arch::{BasicBlock, Classifier, ConvBnRelu, Resnet, SeedCnn};

/// Name of the graph input: float32 `[N, 3, size, size]`, normalised as the metadata says.
pub const INPUT: &str = "input";

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
    let weight = unit.conv.weight.val();
    let [out, inp, kh, kw] = weight.dims();
    let bias = unit.conv.bias.as_ref().map(|b| values(b.val()));
    let norm = &unit.norm;
    let (weight, bias) = fold_batch_norm(
        &values(weight),
        [out, inp, kh, kw],
        bias.as_deref(),
        &values(norm.gamma.val()),
        &values(norm.beta.val()),
        &values(norm.running_mean.value()),
        &values(norm.running_var.value()),
        norm.epsilon as f32,
    )?;
    let stride = unit.conv.stride.map(|s| s as i64);
    let pad = (kh / 2) as i64;
    let y = graph.conv(
        x,
        &weight,
        [out, inp, kh, kw],
        Some(&bias),
        stride,
        [pad, pad, pad, pad],
        unit.conv.groups as i64,
    );
    Ok(if relu { graph.relu(&y) } else { y })
}

fn head(graph: &mut GraphBuilder, x: &Value, head: &burn::nn::Linear) -> (Value, Value) {
    let pooled = graph.global_average_pool(x);
    let features = graph.flatten(&pooled);
    let [inputs, outputs] = head.weight.val().dims();
    let bias = head.bias.as_ref().map(|b| values(b.val()));
    let logits = graph.gemm(
        &features,
        &values(head.weight.val()),
        inputs,
        outputs,
        bias.as_deref(),
    );
    (features, logits)
}

fn seed_cnn(graph: &mut GraphBuilder, net: &SeedCnn) -> Result<(Value, Value), ExportError> {
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

fn resnet(graph: &mut GraphBuilder, net: &Resnet) -> Result<(Value, Value), ExportError> {
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
    let (features, logits) = match model {
        Classifier::SeedCnn(net) => seed_cnn(&mut graph, net)?,
        Classifier::Resnet(net) => resnet(&mut graph, net)?,
    };
    let probabilities = graph.softmax(&logits, 1);
    let classes = metadata.classes.len() as i64;
    graph.output(&logits, "logits", classes);
    graph.output(&probabilities, "probabilities", classes);
    let feature_size = match model {
        Classifier::SeedCnn(net) => net.head.weight.val().dims()[0],
        Classifier::Resnet(net) => net.head.weight.val().dims()[0],
    };
    graph.output(&features, "features", feature_size as i64);
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
