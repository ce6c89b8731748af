// Explainer: pictures in, the artifact's preprocessing applied, one batch run, one Explanation
// per picture out. It holds no mutable state, so concurrent calls need no lock.
#include "gradcam/explainer.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>

#include "gradcam/images.h"

namespace gradcam {
namespace {

std::string describe(const cv::Mat& picture) {
  return std::to_string(picture.cols) + "x" + std::to_string(picture.rows) + " with " + std::to_string(picture.channels()) +
         " channel(s) of depth " + cv::depthToString(picture.depth());
}

// An 8-bit 1-, 3- or 4-channel picture (OpenCV's BGR order) as 8-bit BGR.
cv::Mat as_bgr(const cv::Mat& picture, std::size_t index) {
  const std::string which = "picture " + std::to_string(index);
  if (picture.empty()) throw Error(kBadImage, which + " is empty; expected an 8-bit picture");
  if (picture.depth() != CV_8U || picture.dims != 2) {
    throw Error(kBadImage, which + " is " + describe(picture) + "; expected 8-bit (CV_8U) pixels");
  }
  cv::Mat bgr;
  switch (picture.channels()) {
    case 3: return picture;
    case 1: cv::cvtColor(picture, bgr, cv::COLOR_GRAY2BGR); return bgr;
    case 4: cv::cvtColor(picture, bgr, cv::COLOR_BGRA2BGR); return bgr;
    default: throw Error(kBadImage, which + " is " + describe(picture) + "; expected 1, 3 or 4 channels");
  }
}

cv::Mat from_view(const ImageView& view, std::size_t index) {
  const std::string which = "buffer " + std::to_string(index);
  if (view.data == nullptr || view.rows < 1 || view.cols < 1) {
    throw Error(kBadImage, which + " is empty (" + std::to_string(view.cols) + "x" + std::to_string(view.rows) +
                               "); expected pixels of at least 1x1");
  }
  if (view.channels != 1 && view.channels != 3 && view.channels != 4) {
    throw Error(kBadImage, which + " has " + std::to_string(view.channels) + " channels; expected 1, 3 or 4");
  }
  const std::size_t row = static_cast<std::size_t>(view.cols) * static_cast<std::size_t>(view.channels);
  if (view.stride != 0 && view.stride < row) {
    throw Error(kBadImage, which + " has a stride of " + std::to_string(view.stride) + " bytes; expected at least cols * channels = " +
                               std::to_string(row));
  }
  const std::size_t stride = view.stride ? view.stride : row;
  const std::size_t needed = static_cast<std::size_t>(view.rows - 1) * stride + row;
  if (view.size < needed) {
    throw Error(kBadImage, which + " holds " + std::to_string(view.size) + " bytes; a " + std::to_string(view.cols) + "x" +
                               std::to_string(view.rows) + " picture of " + std::to_string(view.channels) +
                               " channels with a stride of " + std::to_string(stride) + " needs " + std::to_string(needed));
  }
  const cv::Mat wrapped(view.rows, view.cols, CV_8UC(view.channels), const_cast<uint8_t*>(view.data), stride);
  if (view.bgr || view.channels == 1) return as_bgr(wrapped, index);
  cv::Mat bgr;
  cv::cvtColor(wrapped, bgr, view.channels == 4 ? cv::COLOR_RGBA2BGR : cv::COLOR_RGB2BGR);
  return bgr;
}

// The "guided" output is there exactly for a guided method, as [n, k, 3, h, w] at the input's size
// (any backend, the library's or another).
void check_guided(const Outputs& o, const std::string& method, int64_t h, int64_t w) {
  const std::size_t expected = static_cast<std::size_t>(o.n * o.k * 3 * h * w);
  if (is_guided(method) && (o.guided_h != h || o.guided_w != w || o.guided.size() != expected)) {
    throw Error(kRunFailed, "the engine's guided output is not [N, K, 3, H, W] at the input's " + std::to_string(h) + "x" +
                                std::to_string(w) + " (off the artifact contract for method " + method + ")");
  }
  if (!is_guided(method) && !o.guided.empty()) {
    throw Error(kRunFailed, "the engine returned a guided output for method " + method + ", which has none (off the artifact contract)");
  }
}

}  // namespace

Explainer::Explainer(const std::string& artifact, const Options& options) : backend_(open_onnxruntime(artifact, options)) {}

Explainer::Explainer(std::shared_ptr<const Backend> backend) : backend_(std::move(backend)) {
  if (!backend_) throw Error(kInternal, "Explainer needs a backend, got none");
}

const Metadata& Explainer::metadata() const { return backend_->metadata(); }

std::string Explainer::device() const { return backend_->device(); }

std::vector<float> Explainer::preprocess(const cv::Mat& picture, Region* region) const {
  const auto [h, w] = metadata().target_size();
  std::vector<float> input(static_cast<std::size_t>(3 * h * w));
  const Plan p = gradcam::preprocess(as_bgr(picture, 0), metadata(), input.data());
  if (region) *region = p.region;
  return input;
}

std::vector<Explanation> Explainer::explain(const std::vector<cv::Mat>& pictures, const std::vector<int64_t>& classes) const {
  const auto [h, w] = metadata().target_size();
  const std::size_t size = static_cast<std::size_t>(3 * h * w);
  std::vector<float> inputs(pictures.size() * size);
  std::vector<Region> regions;
  for (std::size_t i = 0; i < pictures.size(); ++i) {
    regions.push_back(gradcam::preprocess(as_bgr(pictures[i], i), metadata(), inputs.data() + i * size).region);
  }
  std::vector<Explanation> out = explain_inputs(inputs.data(), static_cast<int64_t>(pictures.size()), h, w, classes);
  for (std::size_t i = 0; i < out.size(); ++i) out[i].region = regions[i];
  return out;
}

std::vector<Explanation> Explainer::explain_buffers(const std::vector<ImageView>& pictures, const std::vector<int64_t>& classes) const {
  std::vector<cv::Mat> converted;
  for (std::size_t i = 0; i < pictures.size(); ++i) converted.push_back(from_view(pictures[i], i));
  return explain(converted, classes);
}

std::vector<Explanation> Explainer::explain_inputs(const float* inputs, int64_t n, int64_t h, int64_t w,
                                                   const std::vector<int64_t>& classes) const {
  const Metadata& meta = metadata();
  if (n < 1 || inputs == nullptr) throw Error(kBadImage, "no inputs to explain (n = " + std::to_string(n) + "); expected at least 1");
  if (meta.input_size && (h != meta.input_size->first || w != meta.input_size->second)) {
    throw Error(kBadImage, "inputs of " + std::to_string(h) + "x" + std::to_string(w) + "; this artifact takes " +
                               std::to_string(meta.input_size->first) + "x" + std::to_string(meta.input_size->second) + " only");
  }
  if (h < 1 || w < 1) throw Error(kBadImage, "inputs of " + std::to_string(h) + "x" + std::to_string(w) + "; expected at least 1x1");
  std::vector<int64_t> targets;
  if (!classes.empty()) {
    if (!meta.class_input) {
      throw Error(kUsage, "classes given to an artifact without a class input; it explains its top-" + std::to_string(meta.top_k) +
                              " classes (export with class_input=True to choose)");
    }
    if (static_cast<int64_t>(classes.size()) != n) {
      throw Error(kUsage, std::to_string(classes.size()) + " classes for " + std::to_string(n) + " pictures; expected one per picture");
    }
    for (const int64_t c : classes) {
      if (c < -1 || c >= meta.num_classes) {
        throw Error(kUsage, "class " + std::to_string(c) + " is out of range; expected 0.." + std::to_string(meta.num_classes - 1) +
                                " or -1 (top class)");
      }
    }
    targets = classes;
  } else if (meta.class_input) {
    targets.assign(static_cast<std::size_t>(n), -1);
  }
  const Outputs o = backend_->run({inputs, n, h, w, targets.empty() ? nullptr : targets.data()});
  check_guided(o, meta.method, h, w);
  std::vector<Explanation> out(static_cast<std::size_t>(n));
  const std::size_t classes_n = static_cast<std::size_t>(o.num_classes), k = static_cast<std::size_t>(o.k);
  const std::size_t plane = static_cast<std::size_t>(o.h * o.w), guided = static_cast<std::size_t>(3 * o.guided_h * o.guided_w);
  for (std::size_t i = 0; i < out.size(); ++i) {
    Explanation& e = out[i];
    e.logits.assign(o.logits.begin() + i * classes_n, o.logits.begin() + (i + 1) * classes_n);
    e.probabilities.assign(o.probabilities.begin() + i * classes_n, o.probabilities.begin() + (i + 1) * classes_n);
    e.predicted = std::max_element(e.probabilities.begin(), e.probabilities.end()) - e.probabilities.begin();
    e.classes.assign(o.class_index.begin() + i * k, o.class_index.begin() + (i + 1) * k);
    e.scores.assign(o.score.begin() + i * k, o.score.begin() + (i + 1) * k);
    for (const int64_t c : e.classes) e.labels.push_back(meta.label(c));
    e.height = o.h, e.width = o.w;
    e.maps.assign(o.cam.begin() + i * k * plane, o.cam.begin() + (i + 1) * k * plane);
    e.region = {0.0, 0.0, static_cast<double>(w), static_cast<double>(h)};
    if (!o.guided.empty()) {
      e.guided.assign(o.guided.begin() + i * k * guided, o.guided.begin() + (i + 1) * k * guided);
      e.guided_height = o.guided_h, e.guided_width = o.guided_w;
    }
  }
  return out;
}

cv::Mat overlay(const cv::Mat& picture, const Explanation& explanation, std::size_t k, double alpha) {
  if (k >= explanation.classes.size()) {
    throw Error(kUsage, "map " + std::to_string(k) + " asked for; this explanation has " + std::to_string(explanation.classes.size()));
  }
  if (!(alpha >= 0.0 && alpha <= 1.0)) throw Error(kUsage, "alpha " + std::to_string(alpha) + " is not in [0, 1]");
  if (picture.type() != CV_8UC3) throw Error(kBadImage, "overlay draws on an 8-bit BGR picture (CV_8UC3), got " + describe(picture));
  return overlay(picture, explanation.map(k), explanation.height, explanation.width, alpha, explanation.region);
}

cv::Mat guided_picture(const Explanation& explanation, const Metadata& metadata, std::size_t k) {
  if (explanation.guided.empty()) {
    throw Error(kUsage, "this explanation has no guided output: only guided-backprop and guided-gradcam artifacts give one, "
                        "this one's method is " + metadata.method);
  }
  if (k >= explanation.classes.size()) {
    throw Error(kUsage, "guided image " + std::to_string(k) + " asked for; this explanation has " +
                            std::to_string(explanation.classes.size()));
  }
  return guided_picture(explanation.guided_image(k), explanation.guided_height, explanation.guided_width,
                        metadata.preprocessing.channel_order);
}

}  // namespace gradcam
