// The recorded preprocessing applied to a picture (see preprocessing.h), step for step as
// gradcam_model/runtime/preprocessing.py: the same sizes and rounding (Python's round() is
// half-to-even, as std::nearbyint), Pillow's arithmetic for nearest/bilinear/bicubic on 8-bit
// pixels, OpenCV's area/bilinear on float pixels for "area" (version 1's numerics).
#include "gradcam/preprocessing.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "gradcam/error.h"
#include "resample.h"

namespace gradcam {
namespace {

std::pair<int64_t, int64_t> resized_size(const Preprocessing& prep, int64_t h, int64_t w, std::pair<int64_t, int64_t> size,
                                         std::pair<int64_t, int64_t> reference) {
  const auto floor_div = [&](int64_t side) { return static_cast<int64_t>(std::floor(static_cast<double>(side) / prep.crop_pct)); };
  if (prep.resize == "stretch") return {floor_div(size.first), floor_div(size.second)};
  if (prep.resize_size || size.first == size.second) {
    // torchvision's Resize(int): the shorter side gets the size, the longer one int(size * long / short)
    int64_t side = 0;
    const int64_t shorter = std::min(size.first, size.second), reference_shorter = std::min(reference.first, reference.second);
    if (!prep.resize_size) side = floor_div(size.first);
    else if (shorter == reference_shorter) side = *prep.resize_size;
    else side = static_cast<int64_t>(std::nearbyint(static_cast<double>(*prep.resize_size * shorter) / reference_shorter));
    if (w <= h) return {static_cast<int64_t>(static_cast<double>(side * h) / static_cast<double>(w)), side};
    return {side, static_cast<int64_t>(static_cast<double>(side * w) / static_cast<double>(h))};
  }
  // a non-square input: timm's ResizeKeepRatio(floor(size / crop_pct)), the picture covering that size
  const double ratio = std::min(static_cast<double>(h) / floor_div(size.first), static_cast<double>(w) / floor_div(size.second));
  return {static_cast<int64_t>(std::nearbyint(h / ratio)), static_cast<int64_t>(std::nearbyint(w / ratio))};
}

cv::Mat resize(const cv::Mat& image, int rows, int cols, const Preprocessing& prep) {
  if (image.rows == rows && image.cols == cols) return image;
  if (prep.interpolation == "area") {
    // version 1's numerics: float pixels, OpenCV's area average to shrink, bilinear to enlarge
    const bool shrink = image.rows > rows || image.cols > cols;
    cv::Mat out;
    cv::resize(image, out, cv::Size(cols, rows), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
    return out;
  }
  if (prep.interpolation == "nearest") return nearest(image, rows, cols);
  return resample(image, rows, cols, prep.interpolation, prep.antialias);
}

}  // namespace

Plan plan(const Metadata& meta, int64_t rows, int64_t cols) {
  const auto size = meta.target_size();
  Plan p;
  p.resized = resized_size(meta.preprocessing, rows, cols, size, meta.example_size);
  if (p.resized.first < size.first || p.resized.second < size.second) {
    throw Error(kBadImage, "the preprocessing resizes a " + std::to_string(rows) + "x" + std::to_string(cols) +
                               " picture to " + std::to_string(p.resized.first) + "x" + std::to_string(p.resized.second) +
                               ", smaller than the " + std::to_string(size.first) + "x" + std::to_string(size.second) + " crop");
  }
  // torchvision's center_crop rounding
  p.top = static_cast<int64_t>(std::nearbyint(static_cast<double>(p.resized.first - size.first) / 2.0));
  p.left = static_cast<int64_t>(std::nearbyint(static_cast<double>(p.resized.second - size.second) / 2.0));
  const double sy = static_cast<double>(rows) / static_cast<double>(p.resized.first);
  const double sx = static_cast<double>(cols) / static_cast<double>(p.resized.second);
  p.region = {static_cast<double>(p.left) * sx, static_cast<double>(p.top) * sy, static_cast<double>(size.second) * sx,
              static_cast<double>(size.first) * sy};
  return p;
}

Plan preprocess(const cv::Mat& bgr, const Metadata& meta, float* out) {
  if (bgr.type() != CV_8UC3) throw Error(kBadImage, "preprocess takes an 8-bit BGR picture (CV_8UC3)");
  if (bgr.empty()) throw Error(kBadImage, "the picture is empty");
  const Preprocessing& prep = meta.preprocessing;
  const Plan p = plan(meta, bgr.rows, bgr.cols);
  const float scale = static_cast<float>(prep.scale);
  cv::Mat image = bgr;
  if (prep.interpolation == "area") {
    // area works on float pixels: rgb.astype(np.float32) / np.float32(scale)
    cv::Mat pixels(bgr.size(), CV_32FC3);
    for (int y = 0; y < bgr.rows; ++y) {
      const uint8_t* src = bgr.ptr<uint8_t>(y);
      float* dst = pixels.ptr<float>(y);
      for (int x = 0; x < bgr.cols * 3; ++x) dst[x] = static_cast<float>(src[x]) / scale;
    }
    image = pixels;
  }
  image = resize(image, static_cast<int>(p.resized.first), static_cast<int>(p.resized.second), prep);
  const auto [h, w] = meta.target_size();
  const cv::Mat crop = image(cv::Rect(static_cast<int>(p.left), static_cast<int>(p.top), static_cast<int>(w), static_cast<int>(h)));
  // (x - mean) / std with float32 mean and std, channels in the recorded order (the picture is BGR)
  float mean[3], std[3];
  int source[3];
  for (int c = 0; c < 3; ++c) {
    mean[c] = static_cast<float>(meta.mean[c]);
    std[c] = static_cast<float>(meta.std[c]);
    source[c] = prep.channel_order == "BGR" ? c : 2 - c;
  }
  const int64_t plane = h * w;
  const bool floats = crop.depth() == CV_32F;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) {
        const float v = floats ? crop.ptr<float>(y)[3 * x + source[c]]
                               : static_cast<float>(crop.ptr<uint8_t>(y)[3 * x + source[c]]) / scale;
        out[c * plane + y * w + x] = (v - mean[c]) / std[c];
      }
    }
  }
  return p;
}

}  // namespace gradcam
