// gradcam_ort: explain image files with a gradcam_model ONNX artifact under ONNX Runtime.
//
//   gradcam_ort ARTIFACT.onnx IMAGE... --out DIR [--class C] [--batch-size B] [--alpha A] [--threads T] [--cuda]
//
// One Ort::Session, created once and reused for every batch; the preprocessing, overlays,
// predictions.csv and exit codes are shared with gradcam_run (explain.cpp, images.cpp).
// The lines between "docs:" markers are shown in docs/embedding.md (a test keeps them equal).

// Manual init: check that the library offers the API version of these headers before the
// first Ort:: call, instead of crashing on a null API table (headers newer than the library).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "explain.h"

namespace {

using gradcam::Batch;
using gradcam::Error;
using gradcam::Metadata;
using gradcam::Outputs;

const std::vector<std::string> kInputNames{"image", "target_class"};
const std::vector<std::string> kOutputNames{"logits", "probabilities", "class_index", "score", "cam"};

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
std::vector<int64_t> copy_output(const Ort::Value& value, std::size_t index, std::size_t rank, std::vector<T>& to) {
  const Ort::TensorTypeAndShapeInfo info = value.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType expected =
      std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  const std::vector<int64_t> shape = info.GetShape();
  if (info.GetElementType() != expected || shape.size() != rank) {
    throw Error(gradcam::kRunFailed, "output " + kOutputNames[index] + " is off the artifact contract (type or rank)");
  }
  const T* data = value.GetTensorData<T>();
  to.assign(data, data + info.GetElementCount());
  return shape;
}

// ONNX Runtime's log goes here instead of to stderr: failures reach the user as one line from
// the exception, with the last logged error as the cause where it says more (e.g. which CUDA
// library is missing).
void keep_last_error(void* param, OrtLoggingLevel severity, const char* /*category*/, const char* /*logid*/,
                     const char* /*code_location*/, const char* message) {
  if (severity >= ORT_LOGGING_LEVEL_ERROR) *static_cast<std::string*>(param) = message;
}

class OrtEngine final : public gradcam::Engine {
 public:
  explicit OrtEngine(const gradcam::Options& opt) {
    Ort::SessionOptions options = session_options(opt);
    // [docs:session]
    session_ = Ort::Session(env_, opt.artifact.c_str(), options);  // wide-char path on Windows

    // The metadata record: preprocessing, class names, top-K... (see Metadata)
    Ort::AllocatorWithDefaultOptions allocator;
    const Ort::ModelMetadata model_metadata = session_.GetModelMetadata();
    const Ort::AllocatedStringPtr record = model_metadata.LookupCustomMetadataMapAllocated("gradcam.json", allocator);
    // [docs:end]
    if (!record) {
      throw Error(gradcam::kBadArtifact, opt.artifact + " is an ONNX model without gradcam_model metadata (gradcam.json); "
                                                          "export it with gradcam_model");
    }
    try {
      meta_ = gradcam::parse_metadata(record.get(), opt.artifact);
    } catch (const gradcam::MetadataError& e) {
      throw Error(gradcam::kBadArtifact, e.what());
    }
    const std::vector<std::string> expected_inputs(kInputNames.begin(), kInputNames.begin() + (meta_.class_input ? 2 : 1));
    const std::vector<std::string> inputs = names(session_, true), outputs = names(session_, false);
    if (inputs != expected_inputs || outputs != kOutputNames) {
      throw Error(gradcam::kBadArtifact, opt.artifact + " has inputs " + join(inputs) + " and outputs " + join(outputs) +
                                               "; expected " + join(expected_inputs) + " and " + join(kOutputNames));
    }
    device_ = opt.cuda ? "cuda" : "cpu";
  }

  const Metadata& metadata() const override { return meta_; }
  std::string device() const override { return device_; }

  Outputs run(const Batch& batch) override {
    try {
      return run_session(batch);
    } catch (const Ort::Exception& e) {
      throw Error(gradcam::kRunFailed, "the artifact failed to run: " + gradcam::first_line(e.what()));
    }
  }

 private:
  Ort::SessionOptions session_options(const gradcam::Options& opt) const {
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
        const char* keys[] = {"use_tf32"};
        const char* values[] = {"0"};
        Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 1));
        options.AppendExecutionProvider_CUDA_V2(*cuda);  // the onnxruntime-gpu library
      } catch (const Ort::Exception& e) {
        throw Error(gradcam::kRunFailed, "CUDA is not available: " + cause(e) + "; drop --cuda");
      }
    }
    // [docs:end]
    return options;
  }

  Outputs run_session(const Batch& batch) {
    // [docs:run]
    // Inputs: float32 [N, 3, H, W] normalized pixels (+ int64 [N] classes for a class-input artifact).
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const std::array<int64_t, 4> image_shape{batch.n, 3, batch.h, batch.w};
    const std::array<int64_t, 1> class_shape{batch.n};
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(batch.image.data()), batch.image.size(),
                                                     image_shape.data(), image_shape.size()));
    std::vector<const char*> input_names{"image"};
    if (!batch.target_class.empty()) {  // -1 = explain the top class
      inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, const_cast<int64_t*>(batch.target_class.data()),
                                                         batch.target_class.size(), class_shape.data(), 1));
      input_names.push_back("target_class");
    }
    const char* output_names[] = {"logits", "probabilities", "class_index", "score", "cam"};
    std::vector<Ort::Value> outputs = session_.Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(),
                                                   inputs.size(), output_names, 5);
    // outputs[0..4]: logits float [N, C], probabilities float [N, C], class_index int64 [N, K],
    // score float [N, K], cam float [N, K, H, W] in [0, 1]; GetTensorData<T>() reads each.
    // [docs:end]
    Outputs out;
    out.num_classes = copy_output(outputs[0], 0, 2, out.logits)[1];
    copy_output(outputs[1], 1, 2, out.probabilities);
    out.k = copy_output(outputs[2], 2, 2, out.class_index)[1];
    copy_output(outputs[3], 3, 2, out.score);
    const std::vector<int64_t> cam_shape = copy_output(outputs[4], 4, 4, out.cam);
    out.n = cam_shape[0], out.h = cam_shape[2], out.w = cam_shape[3];
    if (out.n != batch.n || cam_shape[1] != out.k) {
      throw Error(gradcam::kRunFailed, "the artifact's outputs do not match the batch (off the artifact contract)");
    }
    return out;
  }

  // The logged error's own text after ORT's "[ONNXRuntimeError] : 1 : FAIL : " prefix, else the exception's.
  std::string cause(const Ort::Exception& e) const {
    if (last_error_.empty()) return gradcam::first_line(e.what());
    const std::size_t prefix = last_error_.rfind(" : ");
    return gradcam::first_line(prefix == std::string::npos ? last_error_ : last_error_.substr(prefix + 3));
  }

  std::string last_error_;  // before env_, which writes to it
  // Errors only: warnings (e.g. about unused initializers) are not for the user.
  Ort::Env env_{ORT_LOGGING_LEVEL_ERROR, "gradcam_ort", keep_last_error, &last_error_};
  Ort::Session session_{nullptr};
  Metadata meta_;
  std::string device_;
};

std::unique_ptr<gradcam::Engine> load(const gradcam::Options& opt) {
  try {
    return std::make_unique<OrtEngine>(opt);
  } catch (const Ort::Exception& e) {
    // With --cuda, a session that cannot start on the GPU fails here too.
    const std::string what = e.what();
    if (opt.cuda && e.GetOrtErrorCode() != ORT_INVALID_PROTOBUF && what.find("CUDA") != std::string::npos) {
      throw Error(gradcam::kRunFailed, "CUDA is not available: " + gradcam::first_line(what) + "; drop --cuda");
    }
    throw Error(gradcam::kBadArtifact, opt.artifact + " is not a loadable ONNX model: " + gradcam::first_line(e.what()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::fprintf(stderr, "gradcam_ort: error: the ONNX Runtime library (%s) is older than the headers this program was "
                         "built with (API version %d); rebuild against older headers\n",
                 OrtGetApiBase()->GetVersionString(), ORT_API_VERSION);
    return gradcam::kInternal;
  }
  Ort::InitApi(api);
  return gradcam::explain_main(argc, argv, "gradcam_ort", ".onnx", load);
}
