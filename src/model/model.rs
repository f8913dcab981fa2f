//! The multi-task network: a residual U-Net whose bottleneck also feeds a classification head.
//! One design serves the research's three input forms: 3D multi-sequence volumes (channels =
//! sequences), single 2D slices (the same network with in-plane 1×3×3 kernels and in-plane
//! striding on a depth-1 volume), and 4D time series (a learned 1×1×1 projection of the time
//! points to feature channels, feeding the same 3D U-Net).
//!
//! Invariants: spatial sizes along strided axes must be multiples of `2^depth`; the segmentation
//! output has the input's spatial size; class logits are `[N, num_classes]`.

use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::pool::{AdaptiveAvgPool3d, AdaptiveAvgPool3dConfig};
use burn::nn::{
    Dropout, DropoutConfig, InstanceNorm, InstanceNormConfig, Linear, LinearConfig, PaddingConfig3d,
};
use burn::prelude::*;

use super::conv::{conv3d_forward, conv3d_forward_before_norm};
use super::norm::instance_norm_forward;
use super::relu::{add_relu, relu};
use super::upconv::upconv_forward;

/// Configuration of the multi-task residual U-Net.
#[derive(Config, Debug, PartialEq)]
pub struct MultiTaskUNetConfig {
    /// Input channels: sequences (3D, 2D) or feature channels after the temporal encoder (4D).
    pub in_channels: usize,
    /// Segmentation labels including background (label 0).
    pub num_labels: usize,
    /// Case-level classes.
    pub num_classes: usize,
    /// Channels of the first level (doubling at each level down).
    #[config(default = 8)]
    pub base_channels: usize,
    /// Number of downsamplings.
    #[config(default = 3)]
    pub depth: usize,
    /// 3 for volumes, 2 for single slices (depth-1 volumes, in-plane kernels).
    #[config(default = 3)]
    pub spatial_dims: usize,
    /// Time points of a 4D input (0: not 4D). The input is then `[N, T, D, H, W]`.
    #[config(default = 0)]
    pub time_points: usize,
    /// Dropout before the classification layer.
    #[config(default = 0.2)]
    pub dropout: f64,
    /// Feed the classification layer the global maximum of the bottleneck features beside
    /// their average (a small lesion is diluted in an average over the whole head; its
    /// maximum is not).
    #[config(default = false)]
    pub class_max_pool: bool,
}

/// conv–norm–ReLU ×2 with a 1×1×1 projection on the skip path when channels change.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    conv1: Conv3d,
    norm1: InstanceNorm,
    conv2: Conv3d,
    norm2: InstanceNorm,
    skip: Option<Conv3d>,
}

impl ResidualBlock {
    fn new(
        device: &Device,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        pad: [usize; 3],
    ) -> Self {
        let conv = |a, b| {
            Conv3dConfig::new([a, b], kernel)
                .with_padding(PaddingConfig3d::Explicit(pad[0], pad[1], pad[2]))
                .init(device)
        };
        Self {
            conv1: conv(c_in, c_out),
            norm1: InstanceNormConfig::new(c_out).init(device),
            conv2: conv(c_out, c_out),
            norm2: InstanceNormConfig::new(c_out).init(device),
            skip: (c_in != c_out).then(|| Conv3dConfig::new([c_in, c_out], [1, 1, 1]).init(device)),
        }
    }

    /// `[N, C_in, D, H, W]` → `[N, C_out, D, H, W]`.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        // Each convolution goes straight into a norm, which cancels its bias.
        let h = conv3d_forward_before_norm(&self.conv1, x.clone());
        let h = relu(instance_norm_forward(&self.norm1, h));
        let h = instance_norm_forward(&self.norm2, conv3d_forward_before_norm(&self.conv2, h));
        let skip = match &self.skip {
            Some(s) => conv3d_forward(s, x),
            None => x,
        };
        add_relu(h, skip)
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct MultiTaskUNet {
    temporal: Option<Conv3d>,
    stem: ResidualBlock,
    downs: Vec<Conv3d>,
    encoders: Vec<ResidualBlock>,
    ups: Vec<ConvTranspose3d>,
    decoders: Vec<ResidualBlock>,
    seg_head: Conv3d,
    pool: AdaptiveAvgPool3d,
    class_max_pool: bool,
    dropout: Dropout,
    class_head: Linear,
}

impl MultiTaskUNetConfig {
    /// Build the network on `device` (an autodiff device to train it).
    pub fn init(&self, device: &Device) -> MultiTaskUNet {
        let flat = self.spatial_dims == 2;
        let kernel = if flat { [1, 3, 3] } else { [3, 3, 3] };
        let pad = if flat { [0, 1, 1] } else { [1, 1, 1] };
        let stride = if flat { [1, 2, 2] } else { [2, 2, 2] };
        let ch = |l: usize| self.base_channels << l;
        let temporal = (self.time_points > 0).then(|| {
            Conv3dConfig::new([self.time_points, self.in_channels], [1, 1, 1]).init(device)
        });
        let stem = ResidualBlock::new(device, self.in_channels, ch(0), kernel, pad);
        let mut downs = Vec::new();
        let mut encoders = Vec::new();
        let mut ups = Vec::new();
        let mut decoders = Vec::new();
        for l in 1..=self.depth {
            downs.push(
                Conv3dConfig::new([ch(l - 1), ch(l)], kernel)
                    .with_stride(stride)
                    .with_padding(PaddingConfig3d::Explicit(pad[0], pad[1], pad[2]))
                    .init(device),
            );
            encoders.push(ResidualBlock::new(device, ch(l), ch(l), kernel, pad));
        }
        for l in (1..=self.depth).rev() {
            ups.push(
                ConvTranspose3dConfig::new([ch(l), ch(l - 1)], stride)
                    .with_stride(stride)
                    .init(device),
            );
            decoders.push(ResidualBlock::new(
                device,
                2 * ch(l - 1),
                ch(l - 1),
                kernel,
                pad,
            ));
        }
        MultiTaskUNet {
            temporal,
            stem,
            downs,
            encoders,
            ups,
            decoders,
            seg_head: Conv3dConfig::new([ch(0), self.num_labels], [1, 1, 1]).init(device),
            pool: AdaptiveAvgPool3dConfig::new([1, 1, 1]).init(),
            class_max_pool: self.class_max_pool,
            dropout: DropoutConfig::new(self.dropout).init(),
            class_head: LinearConfig::new(
                ch(self.depth) * if self.class_max_pool { 2 } else { 1 },
                self.num_classes,
            )
            .init(device),
        }
    }

    /// Multiply-adds of one forward pass of the segmentation path on one patch of `voxels`
    /// voxels (convolutions only: the stem, each level's strided convolution and residual
    /// block, the transposed convolutions, the decoder blocks with their 1×1 skips, the head);
    /// a training step costs about three times this per patch (forward and backward).
    pub fn forward_macs(&self, voxels: usize) -> f64 {
        let flat = self.spatial_dims == 2;
        let (k, shrink): (f64, f64) = if flat { (9.0, 4.0) } else { (27.0, 8.0) };
        let ch = |l: usize| (self.base_channels << l) as f64;
        let at = |l: usize| voxels as f64 / shrink.powi(l as i32);
        let block = |c_in: f64, c_out: f64| {
            let skip = if c_in == c_out { 0.0 } else { c_in * c_out };
            c_in * c_out * k + c_out * c_out * k + skip
        };
        let c_in = self.in_channels as f64;
        let mut macs = at(0) * (block(c_in, ch(0)) + ch(0) * self.num_labels as f64);
        macs += at(0) * self.time_points as f64 * c_in;
        for l in 1..=self.depth {
            let down = ch(l - 1) * ch(l) * k + block(ch(l), ch(l));
            let up = ch(l) * ch(l - 1) * shrink;
            macs += at(l) * (down + up) + at(l - 1) * block(2.0 * ch(l - 1), ch(l - 1));
        }
        macs
    }

    /// How much each strided axis must be divisible by: `[D, H, W]`.
    pub fn size_multiple(&self) -> [usize; 3] {
        let m = 1 << self.depth;
        if self.spatial_dims == 2 {
            [1, m, m]
        } else {
            [m, m, m]
        }
    }
}

/// `conv` reading `extra` more input channels, their weights zero (at first it ignores them).
fn widen_input(mut conv: Conv3d, extra: usize) -> Conv3d {
    conv.weight = conv.weight.map(|w| {
        let [o, _, a, b, c] = w.dims();
        let zeros = Tensor::<5>::zeros([o, extra, a, b, c], &w.device());
        Tensor::cat(vec![w, zeros], 1)
    });
    conv
}

impl MultiTaskUNet {
    /// This network (built with `from`) carried into a network of `to` that reads more input
    /// channels (after the existing ones; their weights start at zero, so at first it computes
    /// what it did) and may have another number of labels (a fresh segmentation head): how an
    /// automatic model is fine-tuned into a promptable one. Everything else must match. (Where
    /// the wider stem's input equals its width, its skip path is the identity and the carried
    /// network computes what it did only up to that path.)
    pub fn widened(
        mut self,
        from: &MultiTaskUNetConfig,
        to: &MultiTaskUNetConfig,
        device: &Device,
    ) -> Result<MultiTaskUNet, String> {
        let same = from.base_channels == to.base_channels
            && from.depth == to.depth
            && from.spatial_dims == to.spatial_dims
            && from.time_points == 0
            && to.time_points == 0
            && from.num_classes == to.num_classes
            && from.class_max_pool == to.class_max_pool
            && to.in_channels >= from.in_channels;
        if !same {
            return Err(format!(
                "a network of {} inputs, width {}, depth {} cannot be carried into one of {} \
                 inputs, width {}, depth {}",
                from.in_channels,
                from.base_channels,
                from.depth,
                to.in_channels,
                to.base_channels,
                to.depth
            ));
        }
        let fresh = to.init(device);
        let extra = to.in_channels - from.in_channels;
        self.stem.conv1 = widen_input(self.stem.conv1, extra);
        self.stem.skip = match (self.stem.skip, fresh.stem.skip) {
            (Some(s), Some(_)) => Some(widen_input(s, extra)),
            (_, f) => f,
        };
        if from.num_labels != to.num_labels {
            self.seg_head = fresh.seg_head;
        }
        Ok(self)
    }

    /// `x`: `[N, C, D, H, W]` (4D: `[N, T, D, H, W]`) → segmentation logits
    /// `[N, num_labels, D, H, W]` and class logits `[N, num_classes]`.
    pub fn forward(&self, x: Tensor<5>) -> (Tensor<5>, Tensor<2>) {
        let (mut h, mut skips) = self.encode(x);
        let cls = self.classify(h.clone());
        for (up, dec) in self.ups.iter().zip(&self.decoders) {
            let skip = skips.pop().unwrap_or_else(|| h.clone());
            let u = upconv_forward(up, h);
            h = dec.forward(Tensor::cat(vec![u, skip], 1));
        }
        (conv3d_forward(&self.seg_head, h), cls)
    }

    /// `x`: `[N, C, D, H, W]` → class logits `[N, num_classes]`, through the encoder only (the
    /// decoder's work would be thrown away: class steps and whole-head classification).
    pub fn forward_class(&self, x: Tensor<5>) -> Tensor<2> {
        let (bottleneck, _) = self.encode(x);
        self.classify(bottleneck)
    }

    /// The encoder: the bottleneck `[N, C·2^depth, …]` and the skips, shallowest first.
    fn encode(&self, x: Tensor<5>) -> (Tensor<5>, Vec<Tensor<5>>) {
        let x = match &self.temporal {
            Some(t) => relu(conv3d_forward(t, x)),
            None => x,
        };
        let mut h = self.stem.forward(x);
        let mut skips = Vec::with_capacity(self.downs.len());
        for (down, enc) in self.downs.iter().zip(&self.encoders) {
            skips.push(h.clone());
            h = enc.forward(relu(conv3d_forward(down, h)));
        }
        (h, skips)
    }

    /// Class logits from the bottleneck: average (and max) pooled, dropout, linear.
    fn classify(&self, bottleneck: Tensor<5>) -> Tensor<2> {
        // In f32 whatever the step computes in (a mixed-precision step's features are half).
        let bottleneck = super::precision::cast_to(bottleneck, burn::tensor::FloatDType::F32);
        let pooled = self.pool.forward(bottleneck.clone());
        let [n, c, _, _, _] = pooled.dims();
        let mut feat = pooled.reshape([n, c]);
        if self.class_max_pool {
            let max = bottleneck.max_dims(&[2, 3, 4]).reshape([n, c]);
            feat = Tensor::cat(vec![feat, max], 1);
        }
        self.class_head.forward(self.dropout.forward(feat))
    }
}
