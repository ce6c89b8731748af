// Image files in and heat-map overlays out, with OpenCV; each step does what
// gradcam_model.runtime does in Python (inputs.py: collect_images; images.py: load_image;
// visualize.py: overlay), so that both give the same files and pixels.
#pragma once

#include <opencv2/core.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "gradcam/preprocessing.h"

namespace gradcam {

// The file extensions image folders are searched for (gradcam_model.runtime.IMAGE_SUFFIXES), lower case.
extern const std::vector<std::string> kImageSuffixes;

// One picture to explain: its file, a unique name for its outputs (the file stem, or
// <folder>/<relative path without suffix> for pictures found in a folder; "-2", "-3"... for
// repeats) and the label of an ImageFolder layout (<folder>/<class>/.../file), else empty.
struct ImageInput {
  std::string path, key, label;
};

// Files as given and the pictures in folders (recursively, sorted as Python's pathlib sorts,
// extensions in kImageSuffixes), as gradcam_model.runtime.collect_images. A path that does not
// exist is kept (loading it fails, so a run can record it and carry on); a folder without
// pictures throws Error(kMissingFile).
std::vector<ImageInput> collect_images(const std::vector<std::string>& paths);

// The long side `gradcam explain` decodes pictures to at most (gradcam_model.runtime.DEFAULT_MAX_SIDE).
constexpr int kDefaultMaxSide = 2048;

// The file decoded as 8-bit BGR [H, W, 3]: grey images are expanded, alpha is dropped,
// EXIF orientation applied (cv::IMREAD_COLOR, as the Python runtime). With `max_side` > 0, no
// larger than that on its long side, as gradcam_model.runtime.decode_image: a JPEG file of 2 MB
// or more decoded at 1/2, 1/4 or 1/8 scale by libjpeg, then any picture still larger shrunk
// with OpenCV's area average. Throws
// Error(kMissingFile) when the file does not exist or cannot be read, Error(kBadImage) when
// it is not a picture. OpenCV's decoders may still print warnings (libjpeg: "Premature end of
// JPEG file") to stderr themselves; the programs point fd 2 to /dev/null around this call.
cv::Mat load_image(const std::string& path, int max_side = 0);

// (1 - alpha) * image + alpha * jet(cam), the map resized bilinearly to the region of the picture
// it explains (the rest dimmed to half its brightness; the whole picture for a stretch): BGR uint8,
// as gradcam_model.runtime.visualize.overlay(..., region=explained_region(...)).
cv::Mat overlay(const cv::Mat& bgr, const float* cam, int64_t h, int64_t w, double alpha, const Region& region);

// One guided gradient float32 [3, h, w] (the "guided" output's image of one class) as a BGR 8-bit
// picture, as gradcam_model.runtime.visualize.guided_picture draws it (pytorch-grad-cam's
// deprocess_image): standardized over all its values, (g - mean) / (std + 1e-5) * 0.1 + 0.5 in
// float32, clipped to [0, 1], times 255 truncated (mid grey 127 where the gradient is 0; a NaN is 0).
// `channel_order` is the network input's ("RGB" or "BGR", the metadata's preprocessing).
// Throws Error(kUsage) for an empty image or another channel order.
cv::Mat guided_picture(const float* guided, int64_t h, int64_t w, const std::string& channel_order = "RGB");

}  // namespace gradcam
