//! The shapes of one 2-D convolution, and the im2col / col2im copies between images and the
//! patch matrix the GEMMs multiply.
//!
//! Layout: images are NCHW and contiguous. A patch matrix holds, for a run of `images`
//! consecutive images, one row per (input channel, kernel row, kernel column) and one column
//! per (image, output pixel): row `(c·kh + i)·kw + j`, column `image·P + oh·out_w + ow`, where
//! `P = out_h·out_w`. The rows of one group are contiguous, so a group's GEMM reads a block.

use burn::tensor::ops::ConvOptions;

/// Every size of a convolution, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Padding before the first row and column; the padding after them only shapes the output.
    pub pad_before: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeometry {
    /// The geometry of `x [N, C_in, H, W]` convolved with `weight [C_out, C_in/groups, kh, kw]`.
    ///
    /// Panics, as burn's own convolution does, when the shapes disagree: a network built wrong
    /// is a programming error, not bad input.
    pub fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
        let [batch, in_channels, in_h, in_w] = x;
        let [out_channels, per_group, kh, kw] = weight;
        let groups = options.groups;
        assert!(
            groups > 0 && in_channels % groups == 0 && out_channels % groups == 0,
            "conv2d: {in_channels} input and {out_channels} output channels do not split into {groups} groups"
        );
        assert_eq!(
            per_group * groups,
            in_channels,
            "conv2d: weight {weight:?} does not match {in_channels} input channels in {groups} groups"
        );
        let out_size = |axis: usize, size: usize, kernel: usize| {
            let (before, after) = options.padding[axis];
            let span = options.dilation[axis] * (kernel - 1) + 1;
            let padded = size + before + after;
            assert!(
                padded >= span,
                "conv2d: kernel span {span} exceeds padded input {padded}"
            );
            (padded - span) / options.stride[axis] + 1
        };
        Self {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel: [kh, kw],
            stride: options.stride,
            pad_before: [options.padding[0].0, options.padding[1].0],
            dilation: options.dilation,
            groups,
            out_h: out_size(0, in_h, kh),
            out_w: out_size(1, in_w, kw),
        }
    }

    pub fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }

    pub fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Rows of one group's patch matrix: the reduction length of its GEMMs.
    pub fn group_rows(&self) -> usize {
        self.in_per_group() * self.kernel[0] * self.kernel[1]
    }

    /// Rows of the whole patch matrix.
    pub fn patch_rows(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    pub fn image_len(&self) -> usize {
        self.in_channels * self.in_pixels()
    }

    pub fn output_len(&self) -> usize {
        self.out_channels * self.out_pixels()
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.group_rows()
    }

    /// A 1×1, stride-1, unpadded convolution: an image already is its patch matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad_before == [0, 0]
    }

    /// Multiply-adds ×2 of the forward pass (each backward pass costs the same).
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64
            * self.out_channels as f64
            * self.out_pixels() as f64
            * self.group_rows() as f64
    }

    /// How many images one GEMM spans: enough columns (≥ 512) that small late-layer feature
    /// maps still give the GEMM a long dimension, but never so many that fewer chunks than
    /// threads remain.
    pub fn images_per_chunk(&self, threads: usize) -> usize {
        let wide_enough = 512usize.div_ceil(self.out_pixels().max(1));
        let per_thread = self.batch.div_ceil(threads.max(1));
        wide_enough.min(per_thread).max(1)
    }

    /// For kernel tap `tap` on axis `axis`, the output positions whose input position
    /// `o·stride + tap·dilation − pad` lies inside the image, as `start..end`, and the offset.
    fn valid_outputs(&self, axis: usize, tap: usize) -> (usize, usize, isize) {
        let (out_len, in_len) = if axis == 0 {
            (self.out_h, self.in_h)
        } else {
            (self.out_w, self.in_w)
        };
        let stride = self.stride[axis] as isize;
        let offset = (tap * self.dilation[axis]) as isize - self.pad_before[axis] as isize;
        let start = if offset >= 0 {
            0
        } else {
            ((-offset) + stride - 1) / stride
        };
        let remaining = in_len as isize - offset;
        let end = if remaining <= 0 {
            0
        } else {
            (remaining + stride - 1) / stride
        };
        let end = (end.max(0) as usize).min(out_len);
        ((start as usize).min(end), end, offset)
    }

    /// Writes the patch matrix columns of `image` (one image, NCHW) into `patches`, whose rows
    /// are `row_len` long, starting at column `column`.
    pub fn im2col(&self, image: &[f32], patches: &mut [f32], row_len: usize, column: usize) {
        let [kh, kw] = self.kernel;
        let (out_w, in_w, pixels) = (self.out_w, self.in_w, self.out_pixels());
        let stride_w = self.stride[1];
        for channel in 0..self.in_channels {
            let plane = &image[channel * self.in_pixels()..(channel + 1) * self.in_pixels()];
            for i in 0..kh {
                let (oh_start, oh_end, offset_h) = self.valid_outputs(0, i);
                for j in 0..kw {
                    let (ow_start, ow_end, offset_w) = self.valid_outputs(1, j);
                    let row = (channel * kh + i) * kw + j;
                    let dst = &mut patches[row * row_len + column..][..pixels];
                    dst[..oh_start * out_w].fill(0.0);
                    dst[oh_end * out_w..].fill(0.0);
                    for oh in oh_start..oh_end {
                        let ih = (oh * self.stride[0]) as isize + offset_h;
                        let src = &plane[ih as usize * in_w..(ih as usize + 1) * in_w];
                        let dst_row = &mut dst[oh * out_w..(oh + 1) * out_w];
                        dst_row[..ow_start].fill(0.0);
                        dst_row[ow_end..].fill(0.0);
                        if ow_start == ow_end {
                            continue;
                        }
                        let first = (ow_start * stride_w) as isize + offset_w;
                        if stride_w == 1 {
                            let first = first as usize;
                            dst_row[ow_start..ow_end]
                                .copy_from_slice(&src[first..first + ow_end - ow_start]);
                        } else {
                            for (k, out) in dst_row[ow_start..ow_end].iter_mut().enumerate() {
                                *out = src[first as usize + k * stride_w];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds the patch matrix columns starting at `column` back onto `image` (one image, NCHW):
    /// the adjoint of [`ConvGeometry::im2col`], which turns patch gradients into input ones.
    pub fn col2im_add(&self, patches: &[f32], row_len: usize, column: usize, image: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let (out_w, in_w, pixels) = (self.out_w, self.in_w, self.out_pixels());
        let stride_w = self.stride[1];
        let in_pixels = self.in_pixels();
        for channel in 0..self.in_channels {
            let plane = &mut image[channel * in_pixels..(channel + 1) * in_pixels];
            for i in 0..kh {
                let (oh_start, oh_end, offset_h) = self.valid_outputs(0, i);
                for j in 0..kw {
                    let (ow_start, ow_end, offset_w) = self.valid_outputs(1, j);
                    if ow_start == ow_end {
                        continue;
                    }
                    let row = (channel * kh + i) * kw + j;
                    let src = &patches[row * row_len + column..][..pixels];
                    for oh in oh_start..oh_end {
                        let ih = ((oh * self.stride[0]) as isize + offset_h) as usize;
                        let dst = &mut plane[ih * in_w..(ih + 1) * in_w];
                        let src_row = &src[oh * out_w + ow_start..oh * out_w + ow_end];
                        let first = ((ow_start * stride_w) as isize + offset_w) as usize;
                        if stride_w == 1 {
                            for (out, value) in
                                dst[first..first + src_row.len()].iter_mut().zip(src_row)
                            {
                                *out += value;
                            }
                        } else {
                            for (k, value) in src_row.iter().enumerate() {
                                dst[first + k * stride_w] += value;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(
        size: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
    ) -> ConvGeometry {
        ConvGeometry::new(
            [1, 2, size, size + 1],
            [3, 2, kernel, kernel],
            &ConvOptions::new([stride; 2], [pad; 2], [dilation; 2], 1),
        )
    }

    /// col2im must be exactly im2col's adjoint: <im2col(x), p> = <x, col2im(p)> for all x, p.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for (size, kernel, stride, pad, dilation) in [
            (5, 3, 1, 1, 1),
            (7, 3, 2, 1, 1),
            (6, 2, 2, 0, 1),
            (9, 3, 1, 2, 2),
            (4, 5, 3, 3, 1),
        ] {
            let g = geometry(size, kernel, stride, pad, dilation);
            let image: Vec<f32> = (0..g.image_len())
                .map(|i| ((i * 7919) % 13) as f32 - 6.0)
                .collect();
            let cols = g.patch_rows() * g.out_pixels();
            let probe: Vec<f32> = (0..cols)
                .map(|i| ((i * 104729) % 11) as f32 - 5.0)
                .collect();
            let mut patches = vec![f32::NAN; cols];
            g.im2col(&image, &mut patches, g.out_pixels(), 0);
            let mut back = vec![0.0; g.image_len()];
            g.col2im_add(&probe, g.out_pixels(), 0, &mut back);
            let lhs: f32 = patches.iter().zip(&probe).map(|(a, b)| a * b).sum();
            let rhs: f32 = image.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert_eq!(
                lhs, rhs,
                "size {size} kernel {kernel} stride {stride} pad {pad} dilation {dilation}"
            );
        }
    }

    #[test]
    fn im2col_of_a_centred_tap_is_the_image() {
        let g = geometry(4, 3, 1, 1, 1);
        let image: Vec<f32> = (0..g.image_len()).map(|i| i as f32).collect();
        let mut patches = vec![0.0; g.patch_rows() * g.out_pixels()];
        g.im2col(&image, &mut patches, g.out_pixels(), 0);
        // Row 4 is channel 0's centre tap (i = 1, j = 1): the unshifted image plane.
        assert_eq!(
            &patches[4 * g.out_pixels()..5 * g.out_pixels()],
            &image[..g.in_pixels()]
        );
    }
}
