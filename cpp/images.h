// Image files in, network input and heat-map overlays out, with OpenCV; each step does
// what gradcam_model.runtime does in Python (images.py: load_image, preprocess;
// visualize.py: overlay), so that both give the same pixels.
#pragma once

#include <opencv2/core.hpp>
#include <cstdint>
#include <string>

#include "metadata.h"

namespace gradcam {

// The file decoded as 8-bit BGR [H, W, 3]: grey images are expanded, alpha is dropped,
// EXIF orientation applied (cv::IMREAD_COLOR, as the Python runtime). Empty if undecodable.
cv::Mat load_image(const std::string& path);

// Writes the normalized float32 [3, h, w] network input (h, w = meta.target_size()) to `out`.
void preprocess(const cv::Mat& bgr, const Metadata& meta, float* out);

// (1 - alpha) * image + alpha * jet(cam), the map resized bilinearly to the image: BGR uint8.
cv::Mat overlay(const cv::Mat& bgr, const float* cam, int64_t h, int64_t w, double alpha);

}  // namespace gradcam
