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

#include "metadata.h"

namespace gradcam {

// Exit codes, one per failure stage; the same for gradcam_ort and gradcam_run.
enum ExitCode : int {
  kOk = 0,
  kInternal = 1,       // a bug or an unexpected exception
  kUsage = 2,          // bad command line, --class not a class of the artifact or out of range
  kMissingFile = 3,    // the artifact or an image does not exist or is not readable
  kBadArtifact = 4,    // not loadable (e.g. truncated), no / malformed / too new metadata, off-contract inputs or outputs
  kBadImage = 5,       // some image could not be decoded: the others were explained, its CSV row holds the error
  kRunFailed = 6,      // CUDA unavailable, or the engine failed while running a batch
  kWriteFailed = 7,    // the output folder or a file in it cannot be written
};

// An expected failure: one line for stderr and the exit code.
struct Failure {
  int code;
  std::string message;
};

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
  // Runs one batch; throws Failure{kRunFailed, ...} when the engine fails.
  virtual Outputs run(const Batch& batch) = 0;
  // Where it runs, for the summary line ("cpu", "cuda").
  virtual std::string device() const = 0;
};

// Loads the artifact at options.artifact; throws Failure (kBadArtifact, kRunFailed for CUDA).
using EngineFactory = std::unique_ptr<Engine> (*)(const Options& options);

// main() of both programs: parses argv, explains the images, prints errors as one line.
int explain_main(int argc, char** argv, const char* program, const char* artifact_suffix, EngineFactory load);

// Errors must stay on one line: the first line of a multi-line library message.
std::string first_line(const std::string& text);

}  // namespace gradcam
