// Pillow's resampling arithmetic for 8-bit pictures, as gradcam_model/runtime/resample.py
// computes it in numpy: the same weights, the same fixed point, the same pass order.
#pragma once

#include <opencv2/core.hpp>

#include <string>

namespace gradcam {

// `image` (CV_8UC(n)) resized to rows x cols with Pillow's "bilinear", "bicubic" or "box"
// filter, antialiased (the filter widened by the shrink factor) unless `antialias` is false.
cv::Mat resample(const cv::Mat& image, int rows, int cols, const std::string& kind, bool antialias);

// Pillow's NEAREST resize: pixel i takes input int((i + 0.5) * in / out), the positions summed as Pillow does.
cv::Mat nearest(const cv::Mat& image, int rows, int cols);

}  // namespace gradcam
