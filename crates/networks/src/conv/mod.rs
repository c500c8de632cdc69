//! Convolution for the networks: Bestiary's own CPU kernels, hooked into burn as a backend
//! extension with its own backward pass, and burn's convolution on every other backend.
//!
//! burn-flex 0.22.1 implements the forward convolution but not its backward passes, so burn's
//! generic fallback computes the weight gradient as one thin GEMM per input channel, each
//! re-reading the whole output gradient. Here all three passes are a few large GEMMs
//! (`kernels.rs`). burn's `#[backend_extension]` routes the op to the Flex implementation, and
//! to the `Autodiff<Flex>` one (which records the backward step) when gradients are tracked;
//! nothing of burn is forked.

pub mod bench;
mod geometry;
pub mod kernels;

use std::cell::RefCell;
use std::sync::OnceLock;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;

pub use geometry::ConvGeometry;

/// The convolution op with Bestiary's kernels, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBackend: Backend {
    /// `conv2d(x, weight)` with burn's shapes and options, no bias.
    fn bestiary_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `conv2d(x, weight) + bias`. (A separate method: the extension macro routes plain tensor
    /// arguments, not optional ones.)
    fn bestiary_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

/// Which implementation [`conv2d`] uses on the CPU backend: Bestiary's kernels unless
/// `BESTIARY_CONV=burn` asks for burn's own (the benchmarks' "before", and an escape hatch).
pub fn uses_own_kernels() -> bool {
    static OWN: OnceLock<bool> = OnceLock::new();
    *OWN.get_or_init(|| std::env::var("BESTIARY_CONV").as_deref() != Ok("burn"))
}

/// One convolution a network ran: its input and weight shapes and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvCall {
    pub x: [usize; 4],
    pub weight: [usize; 4],
    pub bias: bool,
    pub options: ConvOptions<2>,
}

thread_local! {
    static RECORDED: RefCell<Option<Vec<ConvCall>>> = const { RefCell::new(None) };
}

/// Runs `work` and returns, with its result, every convolution [`conv2d`] ran on this thread
/// meanwhile: the layer shapes of a network, read from its own forward pass.
pub fn record_calls<R>(work: impl FnOnce() -> R) -> (R, Vec<ConvCall>) {
    let previous = RECORDED.with(|cell| cell.replace(Some(Vec::new())));
    let result = work();
    let calls = RECORDED
        .with(|cell| cell.replace(previous))
        .unwrap_or_default();
    (result, calls)
}

/// `conv2d` for the networks: Bestiary's kernels for ungrouped f32 convolutions on the CPU
/// (Flex) backend, burn's convolution for anything else (another backend, another float type,
/// groups).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    RECORDED.with(|cell| {
        if let Some(calls) = cell.borrow_mut().as_mut() {
            calls.push(ConvCall {
                x: x.dims(),
                weight: weight.dims(),
                bias: bias.is_some(),
                options: options.clone(),
            });
        }
    });
    // Grouped convolutions (EfficientNet's depthwise ones) stay with burn-flex, whose direct
    // depthwise kernel beats one tiny GEMM per group.
    let own = uses_own_kernels() && options.groups == 1;
    if !own || !runs_on_flex(&x.device()) || x.dtype() != DType::F32 {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    kernel_conv2d(x, weight, bias, options)
}

/// `conv2d` by Bestiary's kernels, any groups included, for f32 tensors on the Flex backend
/// (with or without autodiff); [`conv2d`] decides when to use it.
pub fn kernel_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let out = match bias {
        Some(bias) => <Dispatch as ConvBackend>::bestiary_conv2d_bias(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            options,
        ),
        None => <Dispatch as ConvBackend>::bestiary_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            options,
        ),
    };
    Tensor::from_dispatch(out)
}

/// The forward pass of burn's [`Conv2d`] module (same parameters, same padding rules) through
/// [`conv2d`], so stored weights load unchanged. `Same` padding, which the networks here do not
/// use, goes through the module itself.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        options,
    )
}

/// Whether tensors on `device` live on the Flex backend (with or without autodiff).
pub(crate) fn runs_on_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

fn dims(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.layout().shape();
    assert_eq!(
        shape.num_dims(),
        4,
        "conv2d: expected a 4-D tensor, got {shape:?}"
    );
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The tensor's f32 values in row-major order, copied only if its layout is a view.
pub(crate) fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

pub(crate) fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("Bestiary's kernels take contiguous f32 tensors")
}

pub(crate) fn flex_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The forward pass on Flex tensors.
fn flex_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let geometry = ConvGeometry::new(dims(&x), dims(&weight), options);
    let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.map(contiguous));
    let mut out = vec![0.0; geometry.batch * geometry.output_len()];
    kernels::forward(
        &geometry,
        values(&x),
        values(&weight),
        bias.as_ref().map(values),
        &mut out,
    );
    flex_tensor(
        out,
        [
            geometry.batch,
            geometry.out_channels,
            geometry.out_h,
            geometry.out_w,
        ],
    )
}

impl ConvBackend for Flex {
    fn bestiary_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_forward(x, weight, None, &options)
    }

    fn bestiary_conv2d_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        flex_forward(x, weight, Some(bias), &options)
    }
}

/// The gradients of one convolution for the inputs that need them (`nodes`: x, weight, bias).
fn register_gradients(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
    [x_node, weight_node, bias_node]: [Option<NodeId>; 3],
    grads: &mut Gradients,
) {
    let geometry = ConvGeometry::new(dims(&x), dims(&weight), options);
    let (x, weight, dy) = (contiguous(x), contiguous(weight), contiguous(output_grad));
    if let Some(node) = x_node {
        let dx = kernels::backward_input(&geometry, values(&weight), values(&dy));
        let shape = [
            geometry.batch,
            geometry.in_channels,
            geometry.in_h,
            geometry.in_w,
        ];
        grads.register::<Flex>(node, flex_tensor(dx, shape));
    }
    if let Some(node) = weight_node {
        let mut dw = vec![0.0; geometry.weight_len()];
        kernels::backward_weight(&geometry, values(&x), values(&dy), &mut dw);
        grads.register::<Flex>(node, flex_tensor(dw, dims(&weight)));
    }
    if let Some(node) = bias_node {
        let mut db = vec![0.0; geometry.out_channels];
        kernels::backward_bias(&geometry, values(&dy), &mut db);
        grads.register::<Flex>(node, flex_tensor(db, [geometry.out_channels]));
    }
}

/// The backward step of a convolution with a bias.
#[derive(Debug)]
struct ConvWithBiasBackward;

/// The backward step of a convolution without one.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvWithBiasBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let nodes = ops.parents.map(|node| node.map(|node| node.id));
        let output_grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight);
        register_gradients(x, weight, output_grad, &options, nodes, grads);
    }
}

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weight_node] = ops.parents.map(|node| node.map(|node| node.id));
        let output_grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x);
        let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight);
        let nodes = [x_node, weight_node, None];
        register_gradients(x, weight, output_grad, &options, nodes, grads);
    }
}

impl<C: CheckpointStrategy> ConvBackend for Autodiff<Flex, C> {
    fn bestiary_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&weight),
                    options.clone(),
                );
                let out = flex_forward(x.into_primitive(), weight.into_primitive(), None, &options);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.into_primitive(),
                weight.into_primitive(),
                None,
                &options,
            )),
        }
    }

    fn bestiary_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match ConvWithBiasBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&weight),
                    options.clone(),
                );
                let out = flex_forward(
                    x.into_primitive(),
                    weight.into_primitive(),
                    Some(bias.into_primitive()),
                    &options,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.into_primitive(),
                weight.into_primitive(),
                Some(bias.into_primitive()),
                &options,
            )),
        }
    }
}
