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
    /// threads remain. (Wider chunks, also for the weight gradient whose reduction they are,
    /// measured no faster on ResNet-18's layers on a Zen 3.)
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

    /// [`ConvGeometry::valid_outputs`] of every kernel tap along `axis`, computed once per
    /// call rather than once per channel.
    fn tap_table(&self, axis: usize) -> Vec<(usize, usize, isize)> {
        (0..self.kernel[axis])
            .map(|tap| self.valid_outputs(axis, tap))
            .collect()
    }

    /// Stride 1 and as wide as the input: each tap's patch row is the input plane shifted by
    /// one offset, so it is one contiguous copy plus the few border pixels it wraps onto.
    fn is_shift(&self) -> bool {
        self.stride == [1, 1] && self.out_w == self.in_w
    }

    /// Writes the patch matrix columns of `image` (one image, NCHW) into `patches`, whose rows
    /// are `row_len` long, starting at column `column`.
    pub fn im2col(&self, image: &[f32], patches: &mut [f32], row_len: usize, column: usize) {
        let [kh, kw] = self.kernel;
        let (out_w, in_w, pixels) = (self.out_w, self.in_w, self.out_pixels());
        let (rows_h, rows_w) = (self.tap_table(0), self.tap_table(1));
        let shift = self.is_shift();
        for channel in 0..self.in_channels {
            let plane = &image[channel * self.in_pixels()..(channel + 1) * self.in_pixels()];
            for (i, &(oh_start, oh_end, offset_h)) in rows_h.iter().enumerate() {
                for (j, &(ow_start, ow_end, offset_w)) in rows_w.iter().enumerate() {
                    let row = (channel * kh + i) * kw + j;
                    let dst = &mut patches[row * row_len + column..][..pixels];
                    dst[..oh_start * out_w].fill(0.0);
                    dst[oh_end * out_w..].fill(0.0);
                    if oh_start == oh_end {
                        continue;
                    }
                    if ow_start == ow_end {
                        dst[oh_start * out_w..oh_end * out_w].fill(0.0);
                    } else if shift {
                        shifted_copy(
                            dst,
                            plane,
                            out_w,
                            [oh_start, oh_end, ow_start, ow_end],
                            offset_h * in_w as isize + offset_w,
                        );
                    } else {
                        self.copy_rows(
                            dst,
                            plane,
                            [oh_start, oh_end, ow_start, ow_end],
                            [offset_h, offset_w],
                        );
                    }
                }
            }
        }
    }

    /// The general (strided or narrower) case of one patch row: row by row.
    fn copy_rows(
        &self,
        dst: &mut [f32],
        plane: &[f32],
        [oh_start, oh_end, ow_start, ow_end]: [usize; 4],
        [offset_h, offset_w]: [isize; 2],
    ) {
        let (out_w, in_w, stride_w) = (self.out_w, self.in_w, self.stride[1]);
        for oh in oh_start..oh_end {
            let ih = (oh * self.stride[0]) as isize + offset_h;
            let src = &plane[ih as usize * in_w..(ih as usize + 1) * in_w];
            let dst_row = &mut dst[oh * out_w..(oh + 1) * out_w];
            dst_row[..ow_start].fill(0.0);
            dst_row[ow_end..].fill(0.0);
            let first = ((ow_start * stride_w) as isize + offset_w) as usize;
            if stride_w == 1 {
                dst_row[ow_start..ow_end].copy_from_slice(&src[first..first + ow_end - ow_start]);
            } else {
                for (out, &value) in dst_row[ow_start..ow_end]
                    .iter_mut()
                    .zip(src[first..].iter().step_by(stride_w))
                {
                    *out = value;
                }
            }
        }
    }

    /// Adds the patch matrix columns starting at `column` back onto `image` (one image, NCHW):
    /// the adjoint of [`ConvGeometry::im2col`], which turns patch gradients into input ones.
    /// The entries of `patches` that im2col fills with padding are set to zero on the way (their
    /// gradient belongs to no input pixel), so a stride-1 row is added as one contiguous span.
    pub fn col2im_add(
        &self,
        patches: &mut [f32],
        row_len: usize,
        column: usize,
        image: &mut [f32],
    ) {
        let [kh, kw] = self.kernel;
        let (out_w, in_w, pixels) = (self.out_w, self.in_w, self.out_pixels());
        let stride_w = self.stride[1];
        let in_pixels = self.in_pixels();
        let (rows_h, rows_w) = (self.tap_table(0), self.tap_table(1));
        let shift = self.is_shift();
        for channel in 0..self.in_channels {
            let plane = &mut image[channel * in_pixels..(channel + 1) * in_pixels];
            for (i, &(oh_start, oh_end, offset_h)) in rows_h.iter().enumerate() {
                for (j, &(ow_start, ow_end, offset_w)) in rows_w.iter().enumerate() {
                    if ow_start == ow_end || oh_start == oh_end {
                        continue;
                    }
                    let row = (channel * kh + i) * kw + j;
                    let src = &mut patches[row * row_len + column..][..pixels];
                    if shift {
                        shifted_add(
                            plane,
                            src,
                            out_w,
                            [oh_start, oh_end, ow_start, ow_end],
                            offset_h * in_w as isize + offset_w,
                        );
                        continue;
                    }
                    let first = ((ow_start * stride_w) as isize + offset_w) as usize;
                    for oh in oh_start..oh_end {
                        let ih = ((oh * self.stride[0]) as isize + offset_h) as usize;
                        let dst = &mut plane[ih * in_w..(ih + 1) * in_w];
                        let src_row = &src[oh * out_w + ow_start..oh * out_w + ow_end];
                        if stride_w == 1 {
                            for (out, value) in
                                dst[first..first + src_row.len()].iter_mut().zip(src_row)
                            {
                                *out += value;
                            }
                        } else {
                            for (out, value) in
                                dst[first..].iter_mut().step_by(stride_w).zip(src_row)
                            {
                                *out += value;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`shifted_copy`]: `plane[p + delta] += src[p]` over the valid rows as one
/// contiguous span, after zeroing the entries of `src` that span wraps onto (padding).
fn shifted_add(
    plane: &mut [f32],
    src: &mut [f32],
    width: usize,
    [oh_start, oh_end, ow_start, ow_end]: [usize; 4],
    delta: isize,
) {
    let first = oh_start * width + ow_start;
    let last = (oh_end - 1) * width + ow_end;
    zero_wrapped_columns(src, width, [oh_start, oh_end, ow_start, ow_end]);
    let target = (first as isize + delta) as usize;
    for (out, value) in plane[target..target + (last - first)]
        .iter_mut()
        .zip(&src[first..last])
    {
        *out += value;
    }
}

/// One patch row of a stride-1 convolution as wide as its input (row length `width` on both
/// sides): `dst[p] = plane[p + delta]` over the valid rows as one contiguous copy, then the
/// pixels that copy wrapped across a row edge (outside the valid columns) set to zero.
fn shifted_copy(
    dst: &mut [f32],
    plane: &[f32],
    width: usize,
    [oh_start, oh_end, ow_start, ow_end]: [usize; 4],
    delta: isize,
) {
    let first = oh_start * width + ow_start;
    let last = (oh_end - 1) * width + ow_end;
    let source = (first as isize + delta) as usize;
    dst[first..last].copy_from_slice(&plane[source..source + (last - first)]);
    dst[oh_start * width..first].fill(0.0);
    dst[last..oh_end * width].fill(0.0);
    zero_wrapped_columns(dst, width, [oh_start, oh_end, ow_start, ow_end]);
}

/// Zeroes what a shifted span covers between consecutive valid rows of a `width`-wide patch
/// row: the columns past `ow_end` and before the next row's `ow_start`. Column by column, as
/// strided stores: a loop per row would become a call to memset per row.
fn zero_wrapped_columns(
    buffer: &mut [f32],
    width: usize,
    [oh_start, oh_end, ow_start, ow_end]: [usize; 4],
) {
    for gap in 0..width - ow_end + ow_start {
        for oh in oh_start..oh_end - 1 {
            buffer[oh * width + ow_end + gap] = 0.0;
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
            g.col2im_add(&mut probe.clone(), g.out_pixels(), 0, &mut back);
            let lhs: f32 = patches.iter().zip(&probe).map(|(a, b)| a * b).sum();
            let rhs: f32 = image.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert_eq!(
                lhs, rhs,
                "size {size} kernel {kernel} stride {stride} pad {pad} dilation {dilation}"
            );
        }
    }

    /// The patch matrix straight from its definition, one element at a time.
    fn naive_im2col(g: &ConvGeometry, image: &[f32]) -> Vec<f32> {
        let [kh, kw] = g.kernel;
        let mut patches = Vec::with_capacity(g.patch_rows() * g.out_pixels());
        for channel in 0..g.in_channels {
            for i in 0..kh {
                for j in 0..kw {
                    for oh in 0..g.out_h {
                        for ow in 0..g.out_w {
                            let ih = (oh * g.stride[0] + i * g.dilation[0]) as isize
                                - g.pad_before[0] as isize;
                            let iw = (ow * g.stride[1] + j * g.dilation[1]) as isize
                                - g.pad_before[1] as isize;
                            let inside = (0..g.in_h as isize).contains(&ih)
                                && (0..g.in_w as isize).contains(&iw);
                            patches.push(if inside {
                                image[channel * g.in_pixels() + ih as usize * g.in_w + iw as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        patches
    }

    /// Both the shifted-plane path (stride 1, same width) and the row-by-row one, with padding
    /// wider than the kernel, dilation, and taps that miss the image entirely.
    #[test]
    fn im2col_matches_its_definition() {
        for (size, kernel, stride, pad, dilation) in [
            (5, 3, 1, 1, 1),
            (4, 3, 1, 1, 1),
            (1, 3, 1, 1, 1),
            (2, 3, 1, 1, 1),
            (9, 3, 1, 2, 2),
            (6, 5, 1, 2, 1),
            (3, 5, 1, 4, 1),
            (7, 3, 2, 1, 1),
            (8, 7, 2, 3, 1),
            (6, 1, 2, 0, 1),
            (4, 5, 3, 3, 1),
        ] {
            let g = geometry(size, kernel, stride, pad, dilation);
            let image: Vec<f32> = (0..g.image_len()).map(|i| i as f32 + 1.0).collect();
            let column = 3;
            let row_len = g.out_pixels() + 5;
            let mut patches = vec![f32::NAN; g.patch_rows() * row_len];
            g.im2col(&image, &mut patches, row_len, column);
            let expected = naive_im2col(&g, &image);
            for row in 0..g.patch_rows() {
                assert_eq!(
                    &patches[row * row_len + column..][..g.out_pixels()],
                    &expected[row * g.out_pixels()..][..g.out_pixels()],
                    "size {size} kernel {kernel} stride {stride} pad {pad} dilation {dilation} row {row}"
                );
            }
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
