// The engine behind an Explainer: a loaded artifact that runs batches of network inputs.
// The library brings ONNX Runtime's (open_onnxruntime); another engine (gradcam_run's libtorch
// one) implements this interface and hands itself to Explainer's constructor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gradcam/metadata.h"

namespace gradcam {

// A batch of network inputs: float32 [n, 3, h, w], normalized with the metadata's mean/std.
struct Batch {
  const float* image = nullptr;
  int64_t n = 0, h = 0, w = 0;
  const int64_t* target_class = nullptr;  // int64 [n] for a class-input artifact (-1: top class), else null
};

// The outputs of the artifact contract for one batch (output_names(method)), on the host, row-major.
struct Outputs {
  std::vector<float> logits;         // [n, num_classes]
  std::vector<float> probabilities;  // [n, num_classes]
  std::vector<int64_t> class_index;  // [n, k]
  std::vector<float> score;          // [n, k]
  std::vector<float> cam;            // [n, k, h, w]
  std::vector<float> guided;         // [n, k, 3, guided_h, guided_w] for a guided method (is_guided), else empty
  int64_t n = 0, num_classes = 0, k = 0, h = 0, w = 0;
  int64_t guided_h = 0, guided_w = 0;  // the network input's size for a guided method, else 0
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const Metadata& metadata() const = 0;
  // Runs one batch; may be called from several threads at once. Throws Error(kRunFailed).
  virtual Outputs run(const Batch& batch) const = 0;
  // Where it runs: "cpu", "cuda:0"...
  virtual std::string device() const = 0;
};

}  // namespace gradcam
