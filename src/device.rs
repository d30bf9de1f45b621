//! The only place that turns `--device` and `--dtype` into candle's `Device` and `DType`.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best device this build supports.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{s}`; use auto, cpu, cuda, cuda:N or metal")
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal => f.write_str("metal"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for DTypeChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype `{s}`; use auto, f32, f16 or bf16")),
        }
    }
}

/// What `--dtype auto` must know about the model: T5 overflows in f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Safe in f16 (BERT-family encoders, GPT-2).
    HalfSafe,
    /// Overflows in f16; use bf16 where the device has it.
    NoF16,
}

pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                cuda(0)
            } else if cfg!(feature = "metal") && candle_core::utils::metal_is_available() {
                metal()
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceChoice::Cuda(ordinal) => cuda(ordinal),
        DeviceChoice::Metal => metal(),
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(
            "this llmx was built without CUDA support; rebuild with `--features cuda`".into(),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Device(format!("cannot open CUDA device {ordinal}: {e}")))
}

fn metal() -> Result<Device> {
    if !cfg!(feature = "metal") {
        return Err(Error::Device(
            "this llmx was built without Metal support; rebuild with `--features metal`".into(),
        ));
    }
    Device::new_metal(0).map_err(|e| Error::Device(format!("cannot open the Metal device: {e}")))
}

/// `auto` is f32 on CPU; on GPUs f16, or bf16 for models that overflow in f16.
pub fn select_dtype(choice: DTypeChoice, device: &Device, precision: Precision) -> DType {
    match choice {
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::Bf16 => DType::BF16,
        DTypeChoice::Auto if device.is_cpu() => DType::F32,
        DTypeChoice::Auto => match precision {
            Precision::HalfSafe => DType::F16,
            Precision::NoF16 => DType::BF16,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_dtype_is_f32_on_cpu() {
        let dtype = select_dtype(DTypeChoice::Auto, &Device::Cpu, Precision::HalfSafe);
        assert_eq!(dtype, DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = select_device(DeviceChoice::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
