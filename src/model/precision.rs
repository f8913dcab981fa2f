//! Mixed-precision training, as PyTorch's autocast with its gradient scaler: the weights and the
//! optimiser stay f32; a step casts its input to the compute precision (f16 or bf16) and every
//! convolution meets half-precision copies of its f32 weights (the cast is part of the graph, so
//! the gradient flows back to the f32 weights in f32); instance norms, the class head and the
//! losses run in f32. In f16 (5 exponent bits) the loss is multiplied by a scale before backward,
//! so small gradients do not flush to zero, and the gradients are divided by it again before the
//! optimiser; a step whose gradients overflowed is skipped and the scale halved, and after
//! `GROWTH_INTERVAL` good steps in a row it doubles (PyTorch's `GradScaler` policy). bf16 keeps
//! f32's exponent range and needs no scale.
//!
//! Invariants: parameters and optimiser state are f32 at every precision; in f32 nothing is cast
//! and nothing is scaled; a skipped step leaves the weights and the optimiser state untouched.

use super::model::MultiTaskUNet;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv3d, ConvTranspose3d};
use burn::nn::PaddingConfig3d;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::module::{conv3d, conv_transpose3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, FloatDType};

/// The precision a training step computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// Convolutions in f16 with a dynamic loss scale.
    F16,
    /// Convolutions in bf16.
    Bf16,
}

/// A precision the device cannot compute in, or a name that is none.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrecisionError {
    /// Not `f32`, `f16` or `bf16`.
    #[error("unknown precision '{0}' (f32, f16 or bf16)")]
    Unknown(String),
    /// The device's backend has no arithmetic in that type.
    #[error("{precision} is not supported on {device}: use f32 there")]
    Unsupported {
        /// The precision asked for.
        precision: &'static str,
        /// The device, as burn names it.
        device: String,
    },
}

impl Precision {
    /// The name the CLI and the reports use: `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision named `name` (`f32`, `f16`, `bf16`; `fp16`, `half` and `bfloat16` too).
    pub fn parse(name: &str) -> Result<Self, PrecisionError> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "half" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(PrecisionError::Unknown(name.to_string())),
        }
    }

    /// The float type convolutions compute in.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether `device` computes in this precision (burn's own answer for its backend).
    pub fn check(self, device: &Device) -> Result<(), PrecisionError> {
        let dtype: DType = self.dtype().into();
        match self == Precision::F32 || device.supports_dtype(dtype) {
            true => Ok(()),
            false => Err(PrecisionError::Unsupported {
                precision: self.name(),
                device: format!("{:?}", device.clone().inner()),
            }),
        }
    }

    /// This precision where `device` computes in it, else f32 (a model trained in half
    /// precision predicting on a device without the type).
    pub fn or_f32_on(self, device: &Device) -> Self {
        match self.check(device) {
            Ok(()) => self,
            Err(_) => Precision::F32,
        }
    }

    /// `x` cast to the compute precision (itself in f32).
    pub fn cast_input<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        cast_to(x, self.dtype())
    }

    /// The loss scale a run in this precision starts with (`None`: it needs none).
    pub fn initial_loss_scale(self) -> Option<LossScale> {
        (self == Precision::F16).then(LossScale::default)
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    /// Its name; f32 when absent (a configuration written before mixed precision has no such
    /// field, and serde asks a missing field for an option) or null.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(Precision::F32),
            Some(name) => Precision::parse(&name).map_err(serde::de::Error::custom),
        }
    }
}

/// `x` in `dtype` (unchanged when it already is).
pub fn cast_to<const D: usize>(x: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    match x.dtype() == DType::from(dtype) {
        true => x,
        false => x.cast(dtype),
    }
}

/// Whether `x` is in a half precision the f32 modules must meet with cast weights.
pub fn is_half<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.dtype(), DType::F16 | DType::BF16)
}

/// The float type of `x` (f32 for anything that is not a half type).
pub(crate) fn float_dtype_of<const D: usize>(x: &Tensor<D>) -> FloatDType {
    match x.dtype() {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}

/// `conv` applied to a half-precision `x` with its weights and bias cast to `x`'s type.
pub fn conv3d_in_dtype_of_input(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let dtype = float_dtype_of(&x);
    let padding = match conv.padding {
        PaddingConfig3d::Explicit(d, h, w) => [d, h, w],
        PaddingConfig3d::Valid => [0; 3],
        // "Same" (unused by the network): through f32 and back.
        PaddingConfig3d::Same => return cast_to(conv.forward(cast_to(x, FloatDType::F32)), dtype),
    };
    conv3d(
        x,
        conv.weight.val().cast(dtype),
        conv.bias.as_ref().map(|b| b.val().cast(dtype)),
        ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups),
    )
}

/// `up` applied to a half-precision `x` with its weights and bias cast to `x`'s type.
pub fn conv_transpose3d_in_dtype_of_input(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    let dtype = float_dtype_of(&x);
    conv_transpose3d(
        x,
        up.weight.val().cast(dtype),
        up.bias.as_ref().map(|b| b.val().cast(dtype)),
        ConvTransposeOptions::new(
            up.stride,
            up.padding,
            up.padding_out,
            up.dilation,
            up.groups,
        ),
    )
}

/// Steps in a row without overflow after which the loss scale doubles.
pub const GROWTH_INTERVAL: u32 = 2000;

/// The dynamic loss scale of an f16 run and its count of good steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    /// What the loss is multiplied by before backward.
    pub scale: f32,
    /// Steps in a row whose gradients were finite.
    pub good_steps: u32,
}

impl Default for LossScale {
    /// PyTorch's starting scale, 2^16.
    fn default() -> Self {
        LossScale {
            scale: 65_536.0,
            good_steps: 0,
        }
    }
}

impl LossScale {
    /// The smallest scale (2^-24, f16's smallest step): a run of overflows (a batch that is
    /// NaN whatever the scale) cannot drive it to zero, where every step would look finite.
    pub const MIN: f32 = 5.960_464_5e-8;

    /// Whether this is a scale a run can go on with (read back from a file, say): finite and
    /// not below `MIN`.
    pub fn is_usable(&self) -> bool {
        self.scale.is_finite() && self.scale >= Self::MIN
    }

    /// The scale after a step whose gradients were `finite` or not: halved on overflow (never
    /// below `MIN`), doubled after `GROWTH_INTERVAL` good steps (without a cap, as PyTorch's).
    pub fn after(self, finite: bool) -> Self {
        if !finite {
            return LossScale {
                scale: (self.scale * 0.5).max(Self::MIN),
                good_steps: 0,
            };
        }
        match self.good_steps + 1 >= GROWTH_INTERVAL {
            true => LossScale {
                scale: self.scale * 2.0,
                good_steps: 0,
            },
            false => LossScale {
                good_steps: self.good_steps + 1,
                ..self
            },
        }
    }
}

/// Divides every gradient a visited parameter has by the scale, keeping the sum of each divided
/// gradient in f32.
struct Unscale<'a> {
    grads: &'a mut GradientsParams,
    inverse: f32,
    sums: Vec<Tensor<1>>,
}

impl ModuleVisitor for Unscale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let (unscaled, sum) = super::unscale_gpu::unscale_and_sum(g, self.inverse);
        self.sums.push(cast_to(sum, FloatDType::F32));
        self.grads.register(param.id, unscaled);
    }
}

/// Divide `grads` (of `model`'s parameters) by `scale`; whether every gradient is finite (one
/// read from the device: the sum of all their sums, which an infinity or a NaN anywhere makes
/// non-finite). On a GPU each f32 gradient's division and partial sums are one kernel
/// (`model::unscale_gpu`), and burn's fusion adds the partial sums in a few, then one
/// reduction; elsewhere a multiplication and one reduction a gradient (on lavapipe an f16
/// step's launches went from 1 232, with a whole-tensor sum after each multiplication and the
/// sums concatenated, to 403 this way, and to 360 with the kernel).
pub fn unscale_gradients(grads: &mut GradientsParams, model: &MultiTaskUNet, scale: f32) -> bool {
    let mut unscale = Unscale {
        grads,
        inverse: 1.0 / scale,
        sums: Vec::new(),
    };
    model.visit(&mut unscale);
    let Some(total) = unscale.sums.into_iter().reduce(|a, b| a + b) else {
        return true;
    };
    total.sum().into_scalar::<f32>().is_finite()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let start = LossScale::default();
        let after_overflow = start.after(false);
        assert_eq!(after_overflow.scale, 32_768.0);
        assert_eq!(after_overflow.good_steps, 0);
        let mut s = after_overflow;
        for _ in 0..GROWTH_INTERVAL - 1 {
            s = s.after(true);
        }
        assert_eq!(s.scale, 32_768.0, "not yet");
        assert_eq!(s.good_steps, GROWTH_INTERVAL - 1);
        let s = s.after(true);
        assert_eq!((s.scale, s.good_steps), (65_536.0, 0));
        // Bounded both ways.
        let mut low = LossScale {
            scale: 1e-7,
            good_steps: 0,
        };
        low = low.after(false);
        assert_eq!(low.scale, f32::powi(2.0, -24));
        assert!(low.is_usable());
        for broken in [f32::INFINITY, f32::NAN, 0.0] {
            let s = LossScale {
                scale: broken,
                good_steps: 0,
            };
            assert!(!s.is_usable(), "{broken}");
        }
    }

    #[test]
    fn a_configuration_without_a_precision_reads_as_f32() {
        #[derive(serde::Deserialize)]
        struct Written {
            #[allow(dead_code)]
            steps: usize,
            precision: Precision,
        }
        let read = |json: &str| serde_json::from_str::<Written>(json).map(|w| w.precision);
        assert_eq!(read(r#"{"steps": 3}"#).unwrap(), Precision::F32);
        assert_eq!(
            read(r#"{"steps": 3, "precision": null}"#).unwrap(),
            Precision::F32
        );
        assert_eq!(
            read(r#"{"steps": 3, "precision": "f16"}"#).unwrap(),
            Precision::F16
        );
        let e = read(r#"{"steps": 3, "precision": "f8"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown precision 'f8'"), "{e}");
        let json = serde_json::to_string(&Precision::Bf16).unwrap();
        assert_eq!(json, "\"bf16\"");
        // The shipped checkpoints, written before mixed precision, load as f32 runs.
        for path in [
            "assets/demo/models/v1/last/config.json",
            "assets/models/prompt_phantom/config.json",
        ] {
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(!text.contains("precision"), "{path} is not an old one");
            let config: crate::model::TrainingConfig = serde_json::from_str(&text).unwrap();
            assert_eq!(config.precision, Precision::F32, "{path}");
        }
    }

    #[test]
    fn unscaling_divides_every_gradient_and_spots_an_overflow() {
        let ad = Device::flex().autodiff();
        let model = crate::model::MultiTaskUNetConfig::new(1, 2, 2)
            .with_base_channels(2)
            .with_depth(1)
            .with_dropout(0.0)
            .init(&ad);
        let x = Tensor::<5>::random([1, 1, 4, 4, 4], burn::tensor::Distribution::Default, &ad);
        let loss = |factor: f32| {
            let (seg, cls) = model.forward(x.clone());
            (seg.sum() + cls.sum()).mul_scalar(factor)
        };
        let plain = GradientsParams::from_grads(loss(1.0).backward(), &model);
        let mut scaled = GradientsParams::from_grads(loss(1024.0).backward(), &model);
        assert!(unscale_gradients(&mut scaled, &model, 1024.0));
        assert_eq!(scaled.len(), plain.len());
        // Every gradient as the unscaled loss's, to f32 rounding.
        struct Compare<'a>(&'a GradientsParams, &'a GradientsParams, usize);
        impl ModuleVisitor for Compare<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                // The blocks' biases before their norms get none (`conv3d_forward_before_norm`).
                let Some(a) = self.0.get::<D>(param.id) else {
                    assert!(
                        self.1.get::<D>(param.id).is_none(),
                        "a gradient on one side"
                    );
                    return;
                };
                let b = self.1.get::<D>(param.id).expect("its unscaled twin");
                let gap: f32 = (a.clone() - b).abs().max().into_scalar();
                let size: f32 = a.abs().max().into_scalar();
                assert!(gap <= 1e-5 * size.max(1e-6), "{gap} of {size}");
                self.2 += 1;
            }
        }
        let mut compare = Compare(&plain, &scaled, 0);
        model.visit(&mut compare);
        assert_eq!(compare.2, plain.len());
        let mut overflowed = GradientsParams::from_grads(loss(f32::INFINITY).backward(), &model);
        assert!(!unscale_gradients(&mut overflowed, &model, 1.0));
    }

    #[test]
    fn precisions_parse_by_their_usual_names() {
        assert_eq!(Precision::parse("fp16"), Ok(Precision::F16));
        assert_eq!(Precision::parse("BF16"), Ok(Precision::Bf16));
        assert_eq!(Precision::parse("f32"), Ok(Precision::F32));
        assert!(matches!(
            Precision::parse("f8"),
            Err(PrecisionError::Unknown(_))
        ));
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(Precision::parse(p.name()), Ok(p));
        }
    }
}
