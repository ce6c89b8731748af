// An artifact's recorded preprocessing, applied: resize, centre crop, scale, channel order,
// normalize. C++'s one function for it, as gradcam_model/runtime/preprocessing.py is Python's.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <utility>

#include "gradcam/metadata.h"

namespace gradcam {

// A rectangle of the original picture in its pixels (x, y: the top-left corner), as floats.
struct Region {
  double x = 0, y = 0, w = 0, h = 0;
};

// Where a picture goes: resized to `resized` (rows, cols), then the crop (top, left) of the
// input size taken; `region` is that crop in the original picture's pixels.
struct Plan {
  std::pair<int64_t, int64_t> resized{0, 0};
  int64_t top = 0, left = 0;
  Region region;
};

// The resize and crop that turn a rows x cols picture into the artifact's input (target_size()),
// as gradcam_model.runtime.preprocessing.plan. Throws Error(kBadImage) when the recorded resize
// is smaller than the crop.
Plan plan(const Metadata& meta, int64_t rows, int64_t cols);

// Writes the normalized float32 [3, h, w] network input of an 8-bit BGR picture (CV_8UC3) to `out`
// and returns its plan.
Plan preprocess(const cv::Mat& bgr, const Metadata& meta, float* out);

}  // namespace gradcam
