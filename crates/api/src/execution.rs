//! Where a model's kernels run: the ONNX Runtime execution provider an InferenceService asks for
//! (`spec.runtime.executionProvider`) and the options of the GPU providers
//! (`spec.runtime.providerOptions`). The operator checks them against `resources.gpu` and turns
//! them into the runtime's flags; the runtime turns the flags into ORT provider options.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// ONNX Runtime execution providers kinfer can request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// CPU (default; `cuda` when `resources.gpu` is set).
    #[default]
    Cpu,
    /// NVIDIA CUDA; needs `resources.gpu`.
    Cuda,
    /// NVIDIA TensorRT, with CUDA for the nodes TensorRT does not take; needs `resources.gpu`
    /// and an image with the TensorRT libraries (libnvinfer 10).
    Tensorrt,
}

impl ExecutionProvider {
    /// The name on the runtime's command line and in its metadata and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }
}

/// How cuDNN picks a convolution algorithm (ORT's `cudnn_conv_algo_search`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CudnnConvAlgoSearch {
    /// Benchmark every algorithm on first use (ORT's default): the fastest kernels, the slowest
    /// first request of each shape — kinfer's warm-up pays it before the version serves.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics: a fast start, kernels that may be slower.
    Heuristic,
    /// The default algorithm, no search.
    Default,
}

impl CudnnConvAlgoSearch {
    /// The name on the runtime's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhaustive => "exhaustive",
            Self::Heuristic => "heuristic",
            Self::Default => "default",
        }
    }
}

/// Options of the CUDA and TensorRT providers. Each is checked against the provider and
/// `resources.gpu` when the service is reconciled (`InvalidProviderOptions`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderOptions {
    /// The CUDA device the sessions run on, counted among the GPUs given to the container
    /// (0, the default, is the first); below `resources.gpu.count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self < 64").message("runtime.providerOptions.deviceId must be between 0 and 63"))]
    pub device_id: Option<i32>,
    /// cuDNN convolution algorithm search (`exhaustive`, `heuristic`, `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cudnn_conv_algo_search: Option<CudnnConvAlgoSearch>,
    /// Half precision: TensorRT builds fp16 engines (`trt_fp16_enable`); `tensorrt` only. A model
    /// for the CUDA provider is made fp16 when it is exported instead.
    #[serde(default)]
    pub fp16: bool,
    /// TensorRT's engine cache (`tensorrt` only; on by default there): built engines are kept on
    /// a volume so a restarted container loads them instead of building them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_cache: Option<EngineCache>,
}

/// The volume of TensorRT's engine cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineCache {
    /// Turn the cache off (every start builds its engines).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// A PersistentVolumeClaim in the service's namespace for the cache, so engines outlive the
    /// pod (a new pod, a node drain); `ReadWriteMany` when pods share it. Without it the cache is
    /// an emptyDir, which outlives container restarts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Size limit of the emptyDir (default `4Gi`); unused with `claimName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}
