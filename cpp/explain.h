// The front end both programs share: command line, image files in, overlays and
// predictions.csv out. Each program supplies only an Engine (ONNX Runtime or libtorch).
//
//   PROGRAM ARTIFACT IMAGE... --out DIR [--class C] [--batch-size B] [--alpha A]
//           [--threads T] [--cuda] [--save-tensors] [--quiet]
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "error.h"
#include "metadata.h"

namespace gradcam {

// A batch of preprocessed images: float32 [n, 3, h, w], normalized with the metadata's mean/std.
struct Batch {
  std::vector<float> image;
  int64_t n = 0, h = 0, w = 0;
  std::vector<int64_t> target_class;  // int64 [n] for a class-input artifact (-1: top class), else empty
};

// The five outputs of the contract for one batch, on the host, row-major.
struct Outputs {
  std::vector<float> logits;         // [n, num_classes]
  std::vector<float> probabilities;  // [n, num_classes]
  std::vector<int64_t> class_index;  // [n, k]
  std::vector<float> score;          // [n, k]
  std::vector<float> cam;            // [n, k, h, w]
  int64_t n = 0, num_classes = 0, k = 0, h = 0, w = 0;
};

struct Options {
  std::string artifact;
  std::vector<std::string> images;
  std::string out;
  std::optional<std::string> class_name;  // an index or a class name
  int64_t batch_size = 8;
  double alpha = 0.4;
  int threads = 0;  // 0: the engine's default
  bool cuda = false;
  bool save_tensors = false;  // also write OUT/tensors/{image,logits,...,cam}.npy, for tests and debugging
  bool quiet = false;
};

// A loaded artifact that runs batches. One per process, reused for every batch.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual const Metadata& metadata() const = 0;
  // Runs one batch; throws Error(kRunFailed, ...) when the engine fails.
  virtual Outputs run(const Batch& batch) = 0;
  // Where it runs, for the summary line ("cpu", "cuda").
  virtual std::string device() const = 0;
};

// Loads the artifact at options.artifact; throws Error (kBadArtifact, kRunFailed for CUDA).
using EngineFactory = std::unique_ptr<Engine> (*)(const Options& options);

// main() of both programs: parses argv, explains the images, prints errors as one line.
int explain_main(int argc, char** argv, const char* program, const char* artifact_suffix, EngineFactory load);

// Errors must stay on one line: the first line of a multi-line library message.
std::string first_line(const std::string& text);

}  // namespace gradcam
