//! The device networks train and run on: burn's Flex CPU backend, or CUDA.

use burn::prelude::*;

/// The device training runs on: burn's Flex CPU backend, or CUDA when built with `cuda` and
/// `BESTIARY_DEVICE=cuda`.
pub fn training_device() -> Device {
    #[cfg(feature = "cuda")]
    if std::env::var("BESTIARY_DEVICE").as_deref() == Ok("cuda") {
        return Device::cuda(0).autodiff();
    }
    Device::flex().autodiff()
}
