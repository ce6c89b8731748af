// The gradcam library's entry point: open an artifact, explain pictures, get one result per picture.
//
//   gradcam::Explainer explainer("model.onnx", {/*threads=*/2});
//   std::vector<gradcam::Explanation> results = explainer.explain({cv::imread("cat.jpg")});
//   cv::imwrite("cat-cam.png", gradcam::overlay(picture, results[0]));
//
// Every failure is a gradcam::Error with a one-line message and a code (error.h); the library
// never prints and never exits. One Explainer may be used from several threads at once.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradcam/backend.h"
#include "gradcam/error.h"
#include "gradcam/metadata.h"
#include "gradcam/preprocessing.h"

namespace gradcam {

// How to run an ONNX artifact under ONNX Runtime.
struct Options {
  int threads = 0;       // intra-op CPU threads; 0: ONNX Runtime's choice
  bool cuda = false;     // the CUDA execution provider (an onnxruntime-gpu library), with float32 math (use_tf32=0)
  int cuda_device = 0;   // the GPU for cuda
};

// An 8-bit interleaved picture in someone else's memory (not copied until explained).
struct ImageView {
  const uint8_t* data = nullptr;
  std::size_t size = 0;     // bytes at data: at least (rows - 1) * stride + cols * channels
  int rows = 0, cols = 0;
  int channels = 3;         // 1 (grey), 3 or 4 (the fourth, alpha, is dropped)
  std::size_t stride = 0;   // bytes from one row to the next; 0: cols * channels
  bool bgr = false;         // colour channels in B, G, R order (OpenCV's); false: R, G, B
};

// What the artifact says about one picture.
struct Explanation {
  std::vector<float> logits;          // [num_classes]
  std::vector<float> probabilities;   // [num_classes], softmax of the logits
  int64_t predicted = 0;              // the top class: argmax of the probabilities
  std::vector<int64_t> classes;       // [K] the explained classes (top-K, or the class asked for)
  std::vector<float> scores;          // [K] their probabilities
  std::vector<std::string> labels;    // [K] their names (the index as text without class names)
  int64_t height = 0, width = 0;      // the maps' size (the network input's, unless exported without upsampling)
  std::vector<float> maps;            // [K, height, width], each in [0, 1]
  Region region;                      // the picture's pixels the maps cover (for tensors: the whole input)
  // Guided methods only (guided-backprop, guided-gradcam; empty otherwise): the artifact's "guided"
  // output, each explained class's signed, unnormalized gradient image [K, 3, guided_height,
  // guided_width] at the network input's size, its channels in the input's order (see guided_picture).
  std::vector<float> guided;
  int64_t guided_height = 0, guided_width = 0;

  // Map k, height * width values, row-major.
  const float* map(std::size_t k = 0) const { return maps.data() + k * static_cast<std::size_t>(height * width); }
  // Guided image k, 3 planes of guided_height * guided_width values.
  const float* guided_image(std::size_t k = 0) const {
    return guided.data() + k * static_cast<std::size_t>(3 * guided_height * guided_width);
  }
};

class Explainer {
 public:
  // Opens an ONNX artifact (.onnx) under ONNX Runtime. Throws Error: kMissingFile (no such file),
  // kBadArtifact (not loadable, no or bad metadata, inputs or outputs off the contract for its method:
  // output_names(method), six with "guided" for a guided method), kRunFailed
  // (CUDA asked for and not available).
  explicit Explainer(const std::string& artifact, const Options& options = {});
  // Runs on another engine (see backend.h).
  explicit Explainer(std::shared_ptr<const Backend> backend);

  const Metadata& metadata() const;
  std::string device() const;

  // `classes`: empty for the artifact's own choice (its top-K, or the top class for a class-input
  // artifact), else one per picture: a class index, or -1 for the top class (class-input artifacts
  // only). All pictures run as one batch. Throws Error: kBadImage (an empty picture, a depth other
  // than 8 bits, a channel count other than 1, 3 or 4, a buffer of the wrong size), kUsage (a class
  // out of range, classes for an artifact without a class input, a count that is not one per
  // picture), kRunFailed (the engine failed).
  std::vector<Explanation> explain(const std::vector<cv::Mat>& pictures, const std::vector<int64_t>& classes = {}) const;
  // Pictures in memory, `ImageView`s (see there).
  std::vector<Explanation> explain_buffers(const std::vector<ImageView>& pictures,
                                           const std::vector<int64_t>& classes = {}) const;
  // Ready network inputs: float32 [n, 3, h, w], preprocessed and normalized (see preprocess);
  // h, w must be the artifact's input size when it has a fixed one.
  std::vector<Explanation> explain_inputs(const float* inputs, int64_t n, int64_t h, int64_t w,
                                          const std::vector<int64_t>& classes = {}) const;

  // The network input of one picture (cv::Mat: 8-bit, 1, 3 (BGR) or 4 (BGRA) channels):
  // float32 [3, h, w] at the artifact's input size, as gradcam_model.runtime.preprocess gives it.
  std::vector<float> preprocess(const cv::Mat& picture, Region* region = nullptr) const;

 private:
  std::shared_ptr<const Backend> backend_;
};

// Opens an ONNX artifact under ONNX Runtime (what Explainer(artifact, options) uses).
std::shared_ptr<const Backend> open_onnxruntime(const std::string& artifact, const Options& options = {});

// Map k of an explanation over its picture (BGR, 8-bit, as given to explain()): a jet heat map
// blended at `alpha` over the region the map explains, the rest dimmed; as gradcam explain's overlays.
cv::Mat overlay(const cv::Mat& picture, const Explanation& explanation, std::size_t k = 0, double alpha = 0.4);

// Guided image k of an explanation of a guided artifact as a picture: BGR, 8-bit, at the network
// input's size, by pytorch-grad-cam's deprocess_image rule, as gradcam_model.runtime.visualize.
// guided_picture (see images.h); `metadata` (the explainer's) gives the input's channel order.
// Throws Error(kUsage) for an explanation without a guided output or a k out of range.
cv::Mat guided_picture(const Explanation& explanation, const Metadata& metadata, std::size_t k = 0);

}  // namespace gradcam
