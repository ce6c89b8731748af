// Image files in, network input and heat-map overlays out, with OpenCV; each step does
// what gradcam_model.runtime does in Python (images.py: load_image, preprocess;
// visualize.py: overlay), so that both give the same pixels.
#pragma once

#include <opencv2/core.hpp>
#include <cstdint>
#include <string>

#include "metadata.h"
#include "preprocessing.h"

namespace gradcam {

// The file decoded as 8-bit BGR [H, W, 3]: grey images are expanded, alpha is dropped,
// EXIF orientation applied (cv::IMREAD_COLOR, as the Python runtime). Empty if undecodable.
cv::Mat load_image(const std::string& path);

// (1 - alpha) * image + alpha * jet(cam), the map resized bilinearly to the region of the picture
// it explains (the rest dimmed to half its brightness; the whole picture for a stretch): BGR uint8,
// as gradcam_model.runtime.visualize.overlay(..., region=explained_region(...)).
cv::Mat overlay(const cv::Mat& bgr, const float* cam, int64_t h, int64_t w, double alpha, const Region& region);

}  // namespace gradcam
