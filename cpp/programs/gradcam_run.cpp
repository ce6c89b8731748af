// gradcam_run: explain image files with a gradcam_model TorchScript artifact under libtorch.
//
//   gradcam_run ARTIFACT.pt IMAGE_OR_FOLDER... --out DIR [--class C] [--batch-size B] [--alpha A] [--threads T] [--cuda]
//
// A thin program over the gradcam library with its own backend (gradcam/backend.h): the module
// is loaded once with its gradcam.json metadata and called under c10::InferenceMode for every
// batch; the preprocessing, overlays, predictions.csv and exit codes are the library's and
// gradcam_ort's (explain_main.cpp).
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "explain_main.h"

namespace {

using gradcam::Batch;
using gradcam::Error;
using gradcam::Metadata;
using gradcam::Outputs;

std::string message(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  return gradcam::first_line(error ? error->what_without_backtrace() : e.what());
}

template <typename T>
std::vector<int64_t> copy_output(const c10::IValue& value, const std::string& name, int64_t rank, std::vector<T>& to) {
  const auto type = std::is_same_v<T, float> ? torch::kFloat : torch::kLong;
  if (!value.isTensor() || value.toTensor().scalar_type() != type || value.toTensor().dim() != rank) {
    throw Error(gradcam::kRunFailed, "output " + name + " is off the artifact contract (type or rank)");
  }
  const torch::Tensor t = value.toTensor().to(torch::kCPU).contiguous();
  to.assign(t.data_ptr<T>(), t.data_ptr<T>() + t.numel());
  return t.sizes().vec();
}

class TorchBackend final : public gradcam::Backend {
 public:
  explicit TorchBackend(const gradcam::CliOptions& opt) : device_(torch::kCPU) {
    if (opt.threads > 0) at::set_num_threads(opt.threads);
    if (opt.cuda) {
      if (!torch::cuda::is_available()) {
        throw Error(gradcam::kRunFailed, "CUDA is not available: this gradcam_run was built without "
                                           "-DGRADCAM_WITH_CUDA=ON or the machine has no usable GPU; drop --cuda");
      }
      device_ = torch::Device(torch::kCUDA, 0);
      // cuDNN runs float32 convolutions in TF32 by default on Ampere and later: measured on an
      // H200, maps then differed from float32 by up to 1.0 (normalized) and classes flipped
      at::globalContext().setAllowTF32CuDNN(false);
    }
    // [docs:load]
    torch::jit::ExtraFilesMap extra{{"gradcam.json", ""}};  // filled with the metadata record by load
    try {
      module_ = torch::jit::load(opt.artifact, device_, extra);
    } catch (const std::exception& e) {
      throw Error(gradcam::kBadArtifact, opt.artifact + " is not a loadable TorchScript file: " + message(e));
    }
    const std::string& text = extra["gradcam.json"];  // JSON: mean, std, input_size, class_names, top_k...
    // [docs:end]
    if (text.empty()) {
      throw Error(gradcam::kBadArtifact, opt.artifact + " is a TorchScript file without gradcam_model metadata "
                                                          "(gradcam.json); export it with gradcam_model.export_torchscript");
    }
    meta_ = gradcam::parse_metadata(text, opt.artifact);
    check_forward(opt.artifact);
    module_.eval();
  }

  const Metadata& metadata() const override { return meta_; }
  std::string device() const override { return device_.str(); }

  Outputs run(const Batch& batch) const override {
    // [docs:forward]
    // float32 [N, 3, H, W] normalized pixels (+ int64 [N] classes for a class-input artifact, -1 = top class);
    // from_blob borrows the batch's memory, .to() copies it only for a GPU.
    std::vector<c10::IValue> inputs{
        torch::from_blob(const_cast<float*>(batch.image), {batch.n, 3, batch.h, batch.w}).to(device_)};
    if (batch.target_class != nullptr) {
      inputs.emplace_back(torch::from_blob(const_cast<int64_t*>(batch.target_class), {batch.n}, torch::kLong).to(device_));
    }
    c10::InferenceMode guard;  // no autograd bookkeeping: the gradient is already in the graph
    c10::IValue result;
    try {
      result = module_.forward(inputs);
    } catch (const std::exception& e) {
      throw Error(gradcam::kRunFailed, "the artifact's forward failed: " + message(e));
    }
    if (!result.isTuple() || result.toTupleRef().elements().size() != outputs_.size()) {
      throw Error(gradcam::kRunFailed, "the artifact's forward did not return the " + std::to_string(outputs_.size()) +
                                           " outputs of the contract");
    }
    // a copy: indexing the tuple's inline storage directly trips g++'s -Warray-bounds in ivalue_inl.h
    const std::vector<c10::IValue> elements = result.toTupleRef().elements().vec();
    // elements[0..4]: logits, probabilities, class_index (int64), score, cam [N, K, H, W] in [0, 1];
    // elements[5] (guided methods): guided [N, K, 3, H, W]
    // [docs:end]
    Outputs out;
    out.num_classes = copy_output(elements[0], outputs_[0], 2, out.logits)[1];
    copy_output(elements[1], outputs_[1], 2, out.probabilities);
    out.k = copy_output(elements[2], outputs_[2], 2, out.class_index)[1];
    copy_output(elements[3], outputs_[3], 2, out.score);
    const std::vector<int64_t> cam_shape = copy_output(elements[4], outputs_[4], 4, out.cam);
    out.n = cam_shape[0], out.h = cam_shape[2], out.w = cam_shape[3];
    if (out.n != batch.n || cam_shape[1] != out.k) {
      throw Error(gradcam::kRunFailed, "the artifact's outputs do not match the batch (off the artifact contract)");
    }
    if (elements.size() > 5) {
      const std::vector<int64_t> guided_shape = copy_output(elements[5], outputs_[5], 5, out.guided);
      out.guided_h = guided_shape[3], out.guided_w = guided_shape[4];
    }
    return out;
  }

 private:
  // forward's inputs and outputs against the metadata: self, image[, target_class] in, and a tuple
  // of the contract's outputs for the recorded method out (a guided method's has six).
  void check_forward(const std::string& artifact) {
    outputs_ = gradcam::output_names(meta_.method);
    const auto forward = module_.find_method("forward");
    if (!forward) throw Error(gradcam::kBadArtifact, artifact + " has no forward method; re-export the artifact");
    const c10::FunctionSchema& schema = forward->function().getSchema();
    const std::size_t expected = meta_.class_input ? 3 : 2;  // self, image[, target_class]
    const std::size_t got = schema.arguments().size();
    if (got != expected) {
      throw Error(gradcam::kBadArtifact, artifact + ": forward takes " + std::to_string(got ? got - 1 : 0) +
                                             " input(s), but its metadata says " + std::to_string(expected - 1) +
                                             "; re-export the artifact");
    }
    const auto tuple = schema.returns().size() == 1 ? schema.returns()[0].type()->cast<c10::TupleType>() : nullptr;
    const std::size_t returned = tuple ? tuple->elements().size() : 0;
    if (returned != outputs_.size()) {
      std::string names;
      for (const std::string& name : outputs_) names += (names.empty() ? "" : ", ") + name;
      throw Error(gradcam::kBadArtifact, artifact + ": forward returns " + std::to_string(returned) +
                                             " outputs; the contract for method " + meta_.method + " has " +
                                             std::to_string(outputs_.size()) + " (" + names + ")");
    }
  }

  torch::Device device_;
  mutable torch::jit::Module module_;  // forward() is not const; concurrent inference calls are safe
  Metadata meta_;
  std::vector<std::string> outputs_;  // output_names(meta_.method)
};

std::shared_ptr<const gradcam::Backend> open(const gradcam::CliOptions& opt) { return std::make_shared<TorchBackend>(opt); }

}  // namespace

int main(int argc, char** argv) { return gradcam::explain_main(argc, argv, "gradcam_run", ".pt", open); }
