//! The three convolution passes on contiguous f32 NCHW slices, each a few large GEMMs over a
//! run of images at a time, split over rayon's threads.
//!
//! - forward: `Y = W · im2col(X)` per group, the bias added to each run's output right after;
//! - input gradient: `dcol = Wᵀ · dY`, then col2im;
//! - weight gradient: `dWᵀ = Σ im2col(X) · dYᵀ`, one GEMM per run of images with the reduction
//!   over all their pixels (not burn's fallback of one thin GEMM per input channel), summed
//!   over one accumulator per thread.
//!
//! Patch matrices live in a per-thread scratch buffer that grows to the largest layer and is
//! then reused, so a training step allocates nothing here but its outputs and the weight
//! gradient's per-worker accumulators.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::geometry::ConvGeometry;

thread_local! {
    /// Patch matrix and staging buffer of the calling thread.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `work` with this thread's two scratch buffers, grown to at least `first` and `second`
/// elements (contents unspecified).
fn with_scratch<R>(
    first: usize,
    second: usize,
    work: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut buffers = cell.borrow_mut();
        let (a, b) = &mut *buffers;
        if a.len() < first {
            a.resize(first, 0.0);
        }
        if b.len() < second {
            b.resize(second, 0.0);
        }
        work(&mut a[..first], &mut b[..second])
    })
}

/// A row-major or transposed view of a matrix in a slice, for [`matmul`].
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    row_stride: usize,
    column_stride: usize,
}

impl<'a> Matrix<'a> {
    fn rows(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            row_stride: row_len,
            column_stride: 1,
        }
    }

    /// The transpose of the row-major matrix in `data` whose rows are `row_len` long.
    fn transposed(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            column_stride: row_len,
        }
    }

    fn last_index(&self, rows: usize, columns: usize) -> usize {
        (rows - 1) * self.row_stride + (columns - 1) * self.column_stride
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, `dst` row-major with rows `dst_row_len` long.
fn matmul(
    dst: &mut [f32],
    dst_row_len: usize,
    accumulate: bool,
    [m, n, k]: [usize; 3],
    lhs: Matrix<'_>,
    rhs: Matrix<'_>,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_row_len..row * dst_row_len + n].fill(0.0);
            }
        }
        return;
    }
    // The bounds gemm's raw pointers rely on, checked once here.
    assert!((m - 1) * dst_row_len + n <= dst.len());
    assert!(lhs.last_index(m, k) < lhs.data.len());
    assert!(rhs.last_index(k, n) < rhs.data.len());
    // SAFETY: every element gemm touches is inside the slices (asserted above); `dst` is
    // borrowed mutably and cannot alias the shared `lhs` and `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_len as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// How the work of one call is split: over runs of images on rayon, each GEMM on one thread,
/// or (fewer runs than threads, e.g. batch 1 at inference) runs in turn with threaded GEMMs.
struct Plan {
    images_per_chunk: usize,
    chunks: usize,
    gemm_parallelism: Parallelism,
    parallel_chunks: bool,
}

impl Plan {
    fn new(geometry: &ConvGeometry) -> Self {
        let threads = rayon::current_num_threads();
        let images_per_chunk = geometry.images_per_chunk(threads);
        let chunks = geometry.batch.div_ceil(images_per_chunk);
        let parallel_chunks = chunks >= threads && threads > 1;
        Self {
            images_per_chunk,
            chunks,
            gemm_parallelism: if parallel_chunks || threads == 1 {
                Parallelism::None
            } else {
                Parallelism::Rayon(threads)
            },
            parallel_chunks,
        }
    }

    /// The images of chunk `chunk`.
    fn images(&self, geometry: &ConvGeometry, chunk: usize) -> std::ops::Range<usize> {
        let start = chunk * self.images_per_chunk;
        start..(start + self.images_per_chunk).min(geometry.batch)
    }
}

/// Fills `patches` (rows `row_len` long) with the patch matrix of `images` of `x`.
fn gather_patches(
    geometry: &ConvGeometry,
    x: &[f32],
    images: std::ops::Range<usize>,
    patches: &mut [f32],
    row_len: usize,
) {
    let (image_len, pixels) = (geometry.image_len(), geometry.out_pixels());
    for (slot, image) in images.enumerate() {
        let image = &x[image * image_len..(image + 1) * image_len];
        if geometry.is_pointwise() {
            for channel in 0..geometry.in_channels {
                patches[channel * row_len + slot * pixels..][..pixels]
                    .copy_from_slice(&image[channel * pixels..(channel + 1) * pixels]);
            }
        } else {
            geometry.im2col(image, patches, row_len, slot * pixels);
        }
    }
}

/// Copies `images` of an NCHW tensor with `channels` planes of `pixels` each into a matrix
/// `[channels, images·pixels]` (so one GEMM spans them all).
fn gather_channels(
    tensor: &[f32],
    matrix: &mut [f32],
    channels: usize,
    pixels: usize,
    images: std::ops::Range<usize>,
) {
    let row_len = images.len() * pixels;
    for (slot, image) in images.enumerate() {
        for channel in 0..channels {
            matrix[channel * row_len + slot * pixels..][..pixels]
                .copy_from_slice(&tensor[(image * channels + channel) * pixels..][..pixels]);
        }
    }
}

/// The inverse of [`gather_channels`] for the first `images` images of `tensor`.
fn scatter_channels(
    matrix: &[f32],
    tensor: &mut [f32],
    channels: usize,
    pixels: usize,
    images: usize,
) {
    let row_len = images * pixels;
    for image in 0..images {
        for channel in 0..channels {
            tensor[(image * channels + channel) * pixels..][..pixels]
                .copy_from_slice(&matrix[channel * row_len + image * pixels..][..pixels]);
        }
    }
}

/// The output gradient of `images` as one `[C_out, images·pixels]` matrix: `dy` itself for
/// one image, else gathered into `staged`.
fn gradient_matrix<'a>(
    geometry: &ConvGeometry,
    dy: &'a [f32],
    images: std::ops::Range<usize>,
    staged: &'a mut [f32],
) -> &'a [f32] {
    let len = geometry.output_len();
    if images.len() == 1 {
        return &dy[images.start * len..images.end * len];
    }
    gather_channels(
        dy,
        staged,
        geometry.out_channels,
        geometry.out_pixels(),
        images,
    );
    staged
}

/// Splits `out` (NCHW, `channels·pixels` per image) into the chunks of `plan`.
fn chunked<'a>(
    out: &'a mut [f32],
    plan: &Plan,
    per_image: usize,
) -> impl IndexedParallelIterator<Item = (usize, &'a mut [f32])> + 'a {
    out.par_chunks_mut(plan.images_per_chunk * per_image.max(1))
        .enumerate()
        .with_min_len(if plan.parallel_chunks { 1 } else { usize::MAX })
}

/// Forward pass: `out [N, C_out, out_h, out_w]` from `x`, `weight` and an optional `bias`.
pub fn forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(x.len(), geometry.batch * geometry.image_len());
    assert_eq!(weight.len(), geometry.weight_len());
    assert_eq!(out.len(), geometry.batch * geometry.output_len());
    let plan = Plan::new(geometry);
    let (pixels, rows, group_rows) = (
        geometry.out_pixels(),
        geometry.patch_rows(),
        geometry.group_rows(),
    );
    let (out_per_group, in_per_group_rows) = (geometry.out_per_group(), group_rows);
    chunked(out, &plan, geometry.output_len()).for_each(|(chunk, out)| {
        let images = plan.images(geometry, chunk);
        let row_len = images.len() * pixels;
        with_scratch(
            rows * row_len,
            geometry.out_channels * row_len,
            |patches, staged| {
                gather_patches(geometry, x, images.clone(), patches, row_len);
                // One image: the GEMM writes the NCHW output directly; several: staged, then copied.
                let direct = images.len() == 1;
                let dst: &mut [f32] = if direct { out } else { staged };
                for group in 0..geometry.groups {
                    matmul(
                        &mut dst[group * out_per_group * row_len..],
                        row_len,
                        false,
                        [out_per_group, row_len, in_per_group_rows],
                        Matrix::rows(&weight[group * out_per_group * group_rows..], group_rows),
                        Matrix::rows(&patches[group * group_rows * row_len..], row_len),
                        plan.gemm_parallelism,
                    );
                }
                if let Some(bias) = bias {
                    for (channel, &b) in bias.iter().enumerate() {
                        for value in &mut dst[channel * row_len..(channel + 1) * row_len] {
                            *value += b;
                        }
                    }
                }
                if !direct {
                    scatter_channels(staged, out, geometry.out_channels, pixels, images.len());
                }
            },
        );
    });
}

/// Input gradient: `dx [N, C_in, H, W]` from `weight` and the output gradient `dy`.
pub fn backward_input(geometry: &ConvGeometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(weight.len(), geometry.weight_len());
    assert_eq!(dy.len(), geometry.batch * geometry.output_len());
    // Zeroed by the allocator (fresh pages for large tensors), which col2im then adds onto.
    let mut dx = vec![0.0; geometry.batch * geometry.image_len()];
    let plan = Plan::new(geometry);
    let (pixels, rows, group_rows) = (
        geometry.out_pixels(),
        geometry.patch_rows(),
        geometry.group_rows(),
    );
    let out_per_group = geometry.out_per_group();
    let image_len = geometry.image_len();
    chunked(&mut dx, &plan, image_len).for_each(|(chunk, dx)| {
        let images = plan.images(geometry, chunk);
        let row_len = images.len() * pixels;
        with_scratch(
            rows * row_len,
            geometry.out_channels * row_len,
            |patches, staged| {
                let gradient = gradient_matrix(geometry, dy, images.clone(), staged);
                // Pointwise with one image: the patch gradient is the input gradient itself.
                let direct = geometry.is_pointwise() && images.len() == 1;
                let dst: &mut [f32] = if direct { dx } else { patches };
                for group in 0..geometry.groups {
                    matmul(
                        &mut dst[group * group_rows * row_len..],
                        row_len,
                        false,
                        [group_rows, row_len, out_per_group],
                        Matrix::transposed(
                            &weight[group * out_per_group * group_rows..],
                            group_rows,
                        ),
                        Matrix::rows(&gradient[group * out_per_group * row_len..], row_len),
                        plan.gemm_parallelism,
                    );
                }
                if direct {
                    return;
                }
                for (slot, image) in dx.chunks_mut(image_len).enumerate() {
                    if geometry.is_pointwise() {
                        for channel in 0..geometry.in_channels {
                            image[channel * pixels..(channel + 1) * pixels].copy_from_slice(
                                &patches[channel * row_len + slot * pixels..][..pixels],
                            );
                        }
                    } else {
                        geometry.col2im_add(patches, row_len, slot * pixels, image);
                    }
                }
            },
        );
    });
    dx
}

/// Writes the output gradient of `images` transposed, `[images·pixels, C_out]` row-major, into
/// `staged`: the weight gradient's GEMM then reads both operands row by row, which the `gemm`
/// crate multiplies 3–4× faster than a column-major operand (measured here: ~190 against
/// ~50 GFLOP/s on ResNet's shapes).
fn transposed_gradient(
    geometry: &ConvGeometry,
    dy: &[f32],
    images: std::ops::Range<usize>,
    staged: &mut [f32],
) {
    const BLOCK: usize = 32;
    let (channels, pixels) = (geometry.out_channels, geometry.out_pixels());
    for (slot, image) in images.enumerate() {
        let planes = &dy[image * channels * pixels..(image + 1) * channels * pixels];
        let dst = &mut staged[slot * pixels * channels..(slot + 1) * pixels * channels];
        // Blocks of pixels, so each source row segment and each destination row stay cached.
        for first in (0..pixels).step_by(BLOCK) {
            let last = (first + BLOCK).min(pixels);
            for channel in 0..channels {
                let src = &planes[channel * pixels + first..channel * pixels + last];
                for (offset, &value) in src.iter().enumerate() {
                    dst[(first + offset) * channels + channel] = value;
                }
            }
        }
    }
}

/// Weight gradient: `dw [C_out, C_in/groups, kh, kw]` from `x` and the output gradient `dy`.
///
/// Computed transposed, `dwᵀ[group][patch row][output channel] = patches · dyᵀ`, with one
/// accumulator per worker, then summed and transposed once into `dw`.
pub fn backward_weight(geometry: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert_eq!(x.len(), geometry.batch * geometry.image_len());
    assert_eq!(dy.len(), geometry.batch * geometry.output_len());
    assert_eq!(dw.len(), geometry.weight_len());
    let plan = Plan::new(geometry);
    let (pixels, rows, group_rows) = (
        geometry.out_pixels(),
        geometry.patch_rows(),
        geometry.group_rows(),
    );
    let (channels, out_per_group) = (geometry.out_channels, geometry.out_per_group());
    // One accumulator per worker, each taking its share of the chunks.
    let workers = if plan.parallel_chunks {
        rayon::current_num_threads().min(plan.chunks)
    } else {
        1
    };
    let accumulate_share = |worker: usize, acc: &mut [f32]| {
        let mut first = true;
        for chunk in (worker..plan.chunks).step_by(workers) {
            let images = plan.images(geometry, chunk);
            let row_len = images.len() * pixels;
            with_scratch(rows * row_len, channels * row_len, |patches, staged| {
                gather_patches(geometry, x, images.clone(), patches, row_len);
                transposed_gradient(geometry, dy, images.clone(), staged);
                for group in 0..geometry.groups {
                    matmul(
                        &mut acc[group * group_rows * out_per_group..],
                        out_per_group,
                        !first,
                        [group_rows, out_per_group, row_len],
                        Matrix::rows(&patches[group * group_rows * row_len..], row_len),
                        Matrix::rows(&staged[group * out_per_group..], channels),
                        plan.gemm_parallelism,
                    );
                }
            });
            first = false;
        }
        if first {
            acc.fill(0.0);
        }
    };
    let len = geometry.weight_len();
    let mut accumulators = vec![0.0f32; workers * len];
    if workers == 1 {
        accumulate_share(0, &mut accumulators);
    } else {
        accumulators
            .par_chunks_mut(len)
            .enumerate()
            .with_max_len(1)
            .for_each(|(worker, acc)| accumulate_share(worker, acc));
    }
    sum_transposed(geometry, &accumulators, dw);
}

/// `dw[o][row] = Σ_worker accumulator[group(o)][row][o mod out_per_group]`: the workers'
/// transposed partial sums (one `weight_len` slice each) added and transposed into `dw` in
/// one pass, a block of 16 output channels at a time (one cache line of each accumulator
/// row), blocks on rayon's threads.
fn sum_transposed(geometry: &ConvGeometry, accumulators: &[f32], dw: &mut [f32]) {
    const BLOCK: usize = 16;
    let (group_rows, out_per_group, len) = (
        geometry.group_rows(),
        geometry.out_per_group(),
        geometry.weight_len(),
    );
    let workers = accumulators.len() / len;
    dw.par_chunks_mut(BLOCK * group_rows)
        .enumerate()
        .for_each(|(block, dst)| {
            // Where output channel `block·16 + local` of row 0 sits in an accumulator.
            let mut columns = [0usize; BLOCK];
            let outs = dst.len() / group_rows;
            for (local, column) in columns[..outs].iter_mut().enumerate() {
                let out = block * BLOCK + local;
                *column = (out / out_per_group) * group_rows * out_per_group + out % out_per_group;
            }
            for row in 0..group_rows {
                for (local, &column) in columns[..outs].iter().enumerate() {
                    let index = column + row * out_per_group;
                    let mut sum = accumulators[index];
                    for worker in 1..workers {
                        sum += accumulators[worker * len + index];
                    }
                    dst[local * group_rows + row] = sum;
                }
            }
        });
}

/// Bias gradient: `db [C_out]`, the output gradient summed over images and pixels.
pub fn backward_bias(geometry: &ConvGeometry, dy: &[f32], db: &mut [f32]) {
    assert_eq!(dy.len(), geometry.batch * geometry.output_len());
    assert_eq!(db.len(), geometry.out_channels);
    let pixels = geometry.out_pixels();
    db.par_iter_mut().enumerate().for_each(|(channel, total)| {
        *total = (0..geometry.batch)
            .map(|image| {
                let start = (image * geometry.out_channels + channel) * pixels;
                dy[start..start + pixels].iter().sum::<f32>()
            })
            .sum();
    });
}
