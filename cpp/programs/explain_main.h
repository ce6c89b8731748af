// The command line both programs share, over the gradcam library: image files and folders in,
// overlays and predictions.csv out. Each program supplies only how to open its artifact.
//
//   PROGRAM ARTIFACT IMAGE_OR_FOLDER... --out DIR [--class C] [--batch-size B] [--alpha A]
//           [--threads T] [--cuda] [--save-tensors] [--quiet]
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gradcam/gradcam.h"

namespace gradcam {

struct CliOptions {
  std::string artifact;
  std::vector<std::string> images;  // files and folders
  std::string out;
  std::optional<std::string> class_name;  // an index or a class name
  int64_t batch_size = 8;
  double alpha = 0.4;
  int threads = 0;  // 0: the engine's default
  bool cuda = false;
  bool save_tensors = false;  // also write OUT/tensors/{image,logits,...,cam}.npy, for tests and debugging
  bool quiet = false;
};

// Opens options.artifact; throws Error (kBadArtifact, kRunFailed for CUDA).
using BackendFactory = std::shared_ptr<const Backend> (*)(const CliOptions& options);

// main() of both programs: parses argv, explains the images, prints errors as one line.
int explain_main(int argc, char** argv, const char* program, const char* artifact_suffix, BackendFactory open);

// Errors must stay on one line: the first line of a multi-line library message.
std::string first_line(const std::string& text);

}  // namespace gradcam
