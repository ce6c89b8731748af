// The ONNX Runtime backend: one Ort::Session per artifact, created once; Session::Run may be
// called from several threads at once (ONNX Runtime guarantees it), so run() takes no lock.
// The lines between "docs:" markers are shown in docs/embedding.md (a test keeps them equal).

// Manual init: check that the library offers the API version of these headers before the
// first Ort:: call, instead of crashing on a null API table (headers newer than the library).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "gradcam/explainer.h"

namespace gradcam {
namespace {

const std::vector<std::string> kInputNames{"image", "target_class"};

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

// ONNX Runtime's log comes here instead of stderr: failures reach the caller as one line from
// the exception, with the last error this thread logged as the cause where it says more (e.g.
// which CUDA library is missing).
thread_local std::string last_error;

void keep_last_error(void* /*param*/, OrtLoggingLevel severity, const char* /*category*/, const char* /*logid*/,
                     const char* /*code_location*/, const char* message) {
  if (severity >= ORT_LOGGING_LEVEL_ERROR) last_error = message;
}

// The process's one Ort::Env (ONNX Runtime shares one environment per process anyway), made on first use.
Ort::Env& environment() {
  static std::once_flag once;
  static std::unique_ptr<Ort::Env> env;
  std::call_once(once, [] {
    const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (api == nullptr) return;
    Ort::InitApi(api);
    // errors only: warnings (e.g. about unused initializers) are not for the caller
    env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "gradcam", keep_last_error, nullptr);
  });
  if (!env) {
    throw Error(kInternal, std::string("the ONNX Runtime library (") + OrtGetApiBase()->GetVersionString() +
                               ") is older than the headers the gradcam library was built with (API version " +
                               std::to_string(ORT_API_VERSION) + "); rebuild it against older headers");
  }
  return *env;
}

// The logged error's own text after ORT's "[ONNXRuntimeError] : 1 : FAIL : " prefix, else the exception's.
std::string cause(const Ort::Exception& e) {
  if (last_error.empty()) return first_line(e.what());
  const std::size_t prefix = last_error.rfind(" : ");
  return first_line(prefix == std::string::npos ? last_error : last_error.substr(prefix + 3));
}

std::vector<std::string> names(const Ort::Session& session, bool inputs) {
  Ort::AllocatorWithDefaultOptions allocator;
  const std::size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) {
    out.emplace_back((inputs ? session.GetInputNameAllocated(i, allocator) : session.GetOutputNameAllocated(i, allocator)).get());
  }
  return out;
}

std::string join(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

// The output's data, copied to `to`, after checking its element type and rank.
template <typename T>
std::vector<int64_t> copy_output(const Ort::Value& value, const char* name, std::size_t rank, std::vector<T>& to) {
  const Ort::TensorTypeAndShapeInfo info = value.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType expected =
      std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  const std::vector<int64_t> shape = info.GetShape();
  if (info.GetElementType() != expected || shape.size() != rank) {
    throw Error(kRunFailed, std::string("output ") + name + " is off the artifact contract (type or rank)");
  }
  const T* data = value.GetTensorData<T>();
  to.assign(data, data + info.GetElementCount());
  return shape;
}

Ort::SessionOptions session_options(const Options& opt) {
  // [docs:options]
  Ort::SessionOptions options;
  if (opt.threads > 0) options.SetIntraOpNumThreads(opt.threads);
  if (opt.cuda) {
    try {
      // float32 math: the CUDA provider's use_tf32 defaults to 1 (TF32 convolutions and GEMMs move
      // maps and can flip classes); the legacy OrtCUDAProviderOptions struct cannot turn it off
      const OrtApi& api = Ort::GetApi();
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
      std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> owned(
          cuda, api.ReleaseCUDAProviderOptions);
      const std::string device = std::to_string(opt.cuda_device);
      const char* keys[] = {"use_tf32", "device_id"};
      const char* values[] = {"0", device.c_str()};
      Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 2));
      options.AppendExecutionProvider_CUDA_V2(*cuda);  // the onnxruntime-gpu library
    } catch (const Ort::Exception& e) {
      throw Error(kRunFailed, "CUDA is not available: " + cause(e) + "; drop --cuda");
    }
  }
  // [docs:end]
  return options;
}

class OrtBackend final : public Backend {
 public:
  OrtBackend(const std::string& artifact, const Options& opt) : device_(opt.cuda ? "cuda:" + std::to_string(opt.cuda_device) : "cpu") {
    Ort::SessionOptions options = session_options(opt);
    // [docs:session]
    session_ = Ort::Session(environment(), artifact.c_str(), options);  // wide-char path on Windows

    // The metadata record: preprocessing, class names, top-K... (see Metadata)
    Ort::AllocatorWithDefaultOptions allocator;
    const Ort::ModelMetadata model_metadata = session_.GetModelMetadata();
    const Ort::AllocatedStringPtr record = model_metadata.LookupCustomMetadataMapAllocated("gradcam.json", allocator);
    // [docs:end]
    if (!record) {
      throw Error(kBadArtifact, artifact + " is an ONNX model without gradcam_model metadata (gradcam.json); export it with gradcam_model");
    }
    meta_ = parse_metadata(record.get(), artifact);
    // the contract's names for the recorded method (a guided one adds "guided"), as the Python runtime checks them
    const std::vector<std::string> expected_inputs(kInputNames.begin(), kInputNames.begin() + (meta_.class_input ? 2 : 1));
    const std::vector<std::string> expected_outputs = output_names(meta_.method);
    const std::vector<std::string> inputs = names(session_, true), outputs = names(session_, false);
    if (inputs != expected_inputs || outputs != expected_outputs) {
      std::vector<std::string> missing;
      for (const std::string& name : expected_outputs) {
        if (std::find(outputs.begin(), outputs.end(), name) == outputs.end()) missing.push_back(name);
      }
      throw Error(kBadArtifact, artifact + " has inputs " + join(inputs) + " and outputs " + join(outputs) + "; expected " +
                                    join(expected_inputs) + " and " + join(expected_outputs) + " for method " + meta_.method +
                                    (missing.empty() ? "" : " (it lacks " + join(missing) + ")"));
    }
    outputs_ = expected_outputs;
    for (const std::string& name : outputs_) output_names_.push_back(name.c_str());
  }

  const Metadata& metadata() const override { return meta_; }
  std::string device() const override { return device_; }

  Outputs run(const Batch& batch) const override {
    try {
      return run_session(batch);
    } catch (const Ort::Exception& e) {
      throw Error(kRunFailed, "the artifact failed to run: " + first_line(e.what()));
    }
  }

 private:
  Outputs run_session(const Batch& batch) const {
    // [docs:run]
    // Inputs: float32 [N, 3, H, W] normalized pixels (+ int64 [N] classes for a class-input artifact).
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const std::array<int64_t, 4> image_shape{batch.n, 3, batch.h, batch.w};
    const std::array<int64_t, 1> class_shape{batch.n};
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(batch.image), batch.n * 3 * batch.h * batch.w,
                                                     image_shape.data(), image_shape.size()));
    std::vector<const char*> input_names{"image"};
    if (batch.target_class != nullptr) {  // -1 = explain the top class
      inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, const_cast<int64_t*>(batch.target_class), batch.n,
                                                         class_shape.data(), 1));
      input_names.push_back("target_class");
    }
    // output_names_: logits, probabilities, class_index, score, cam (+ guided for a guided method)
    // Session::Run is safe to call from several threads at once on one session
    std::vector<Ort::Value> outputs = session_.Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(),
                                                   inputs.size(), output_names_.data(), output_names_.size());
    // outputs[0..4]: logits float [N, C], probabilities float [N, C], class_index int64 [N, K],
    // score float [N, K], cam float [N, K, H, W] in [0, 1]; outputs[5] (guided methods): guided
    // float [N, K, 3, H, W]; GetTensorData<T>() reads each.
    // [docs:end]
    Outputs out;
    out.num_classes = copy_output(outputs[0], "logits", 2, out.logits)[1];
    copy_output(outputs[1], "probabilities", 2, out.probabilities);
    out.k = copy_output(outputs[2], "class_index", 2, out.class_index)[1];
    copy_output(outputs[3], "score", 2, out.score);
    const std::vector<int64_t> cam_shape = copy_output(outputs[4], "cam", 4, out.cam);
    out.n = cam_shape[0], out.h = cam_shape[2], out.w = cam_shape[3];
    if (out.n != batch.n || cam_shape[1] != out.k) {
      throw Error(kRunFailed, "the artifact's outputs do not match the batch (off the artifact contract)");
    }
    if (outputs.size() > 5) {
      const std::vector<int64_t> guided_shape = copy_output(outputs[5], kGuidedOutput, 5, out.guided);
      out.guided_h = guided_shape[3], out.guided_w = guided_shape[4];
    }
    return out;
  }

  // Session::Run is a const member in ONNX Runtime's C API but not in these headers' C++ wrapper
  mutable Ort::Session session_{nullptr};
  Metadata meta_;
  std::vector<std::string> outputs_;       // output_names(meta_.method)
  std::vector<const char*> output_names_;  // outputs_' characters, as Session::Run takes them
  std::string device_;
};

}  // namespace

std::shared_ptr<const Backend> open_onnxruntime(const std::string& artifact, const Options& options) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(artifact, ec);
  if (!std::filesystem::exists(status)) throw Error(kMissingFile, "artifact " + artifact + " does not exist");
  if (!std::filesystem::is_regular_file(status)) throw Error(kMissingFile, "artifact " + artifact + " is not a file");
  if (::access(artifact.c_str(), R_OK) != 0) throw Error(kMissingFile, "artifact " + artifact + " is not readable");
  if (options.threads < 0) throw Error(kUsage, "threads " + std::to_string(options.threads) + " is negative; expected 0 (ONNX Runtime's choice) or more");
  environment();
  last_error.clear();
  try {
    return std::make_shared<OrtBackend>(artifact, options);
  } catch (const Ort::Exception& e) {
    // With CUDA, a session that cannot start on the GPU fails here too.
    const std::string what = e.what();
    if (options.cuda && e.GetOrtErrorCode() != ORT_INVALID_PROTOBUF && what.find("CUDA") != std::string::npos) {
      throw Error(kRunFailed, "CUDA is not available: " + first_line(what) + "; drop --cuda");
    }
    throw Error(kBadArtifact, artifact + " is not a loadable ONNX model: " + first_line(what));
  }
}

}  // namespace gradcam
