// gradcam_ort: explain image files with a gradcam_model ONNX artifact under ONNX Runtime.
//
//   gradcam_ort ARTIFACT.onnx IMAGE_OR_FOLDER... --out DIR [--class C] [--batch-size B] [--alpha A] [--threads T] [--cuda]
//
// A thin program over the gradcam library: the library's ONNX Runtime backend, and the command
// line, overlays, predictions.csv and exit codes shared with gradcam_run (explain_main.cpp).
#include "explain_main.h"

namespace {

std::shared_ptr<const gradcam::Backend> open(const gradcam::CliOptions& cli) {
  gradcam::Options options;
  options.threads = cli.threads;
  options.cuda = cli.cuda;
  return gradcam::open_onnxruntime(cli.artifact, options);
}

}  // namespace

int main(int argc, char** argv) { return gradcam::explain_main(argc, argv, "gradcam_ort", ".onnx", open); }
