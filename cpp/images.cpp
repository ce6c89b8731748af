// OpenCV preprocessing and overlays that match gradcam_model.runtime pixel for pixel.
//
// The arithmetic is float32 in the same order as numpy's (x / 255, then (x - mean) / std,
// each rounded to float32) rather than cv::Mat::convertTo's fused scale-and-shift: that
// keeps the network input identical to the Python runtime's up to OpenCV's own resize.
#include "images.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace gradcam {
namespace {

// libjpeg prints warnings such as "Premature end of JPEG file" straight to stderr, which
// would break the one-line error contract; fd 2 points to /dev/null while an image decodes.
// (The programs decode on one thread, while the engine is idle.)
class SilencedStderr {
 public:
  SilencedStderr() {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 2);
      ::close(null);
    }
  }
  SilencedStderr(const SilencedStderr&) = delete;
  SilencedStderr& operator=(const SilencedStderr&) = delete;
  ~SilencedStderr() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
  }

 private:
  int saved_ = -1;
};

}  // namespace

cv::Mat load_image(const std::string& path) {
  const SilencedStderr quiet;
  try {
    return cv::imread(path, cv::IMREAD_COLOR);
  } catch (const cv::Exception&) {
    return {};  // some decoders throw on truncated data instead of returning an empty Mat
  }
}

// (1 - alpha) * image + alpha * jet(cam) over the whole picture
static cv::Mat blend(const cv::Mat& bgr, const float* cam, int64_t h, int64_t w, double alpha) {
  // np.nan_to_num(cam, nan=0, posinf=1, neginf=0) before resizing, so that no NaN spreads.
  cv::Mat map(static_cast<int>(h), static_cast<int>(w), CV_32F);
  for (int64_t i = 0; i < h * w; ++i) {
    const float v = cam[i];
    map.ptr<float>()[i] = std::isnan(v) ? 0.0f : std::isinf(v) ? (v > 0 ? 1.0f : 0.0f) : v;
  }
  if (map.size() != bgr.size()) {
    cv::Mat resized;
    cv::resize(map, resized, bgr.size(), 0, 0, cv::INTER_LINEAR);
    map = resized;
  }
  // 256 levels, rounded half to even like np.rint
  cv::Mat levels(map.size(), CV_8U);
  for (int y = 0; y < map.rows; ++y) {
    const float* src = map.ptr<float>(y);
    uint8_t* dst = levels.ptr<uint8_t>(y);
    for (int x = 0; x < map.cols; ++x) dst[x] = static_cast<uint8_t>(std::nearbyint(std::clamp(src[x], 0.0f, 1.0f) * 255.0f));
  }
  cv::Mat heat;
  cv::applyColorMap(levels, heat, cv::COLORMAP_JET);  // BGR, as the picture
  // numpy turns the Python float weights into float32 before the float32 blend.
  const float a = static_cast<float>(alpha), b = static_cast<float>(1.0 - alpha);
  cv::Mat blended(bgr.size(), CV_8UC3);
  const int values = bgr.cols * 3;
  for (int y = 0; y < bgr.rows; ++y) {
    const uint8_t* image = bgr.ptr<uint8_t>(y);
    const uint8_t* color = heat.ptr<uint8_t>(y);
    uint8_t* dst = blended.ptr<uint8_t>(y);
    for (int x = 0; x < values; ++x) {
      const float v = std::nearbyint(b * static_cast<float>(image[x]) + a * static_cast<float>(color[x]));
      dst[x] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
    }
  }
  return blended;
}

cv::Mat overlay(const cv::Mat& bgr, const float* cam, int64_t h, int64_t w, double alpha, const Region& region) {
  // the region as whole pixels inside the picture (visualize._pixel_box)
  const auto whole = [](double v) { return static_cast<int>(std::nearbyint(v)); };
  const int x0 = std::max(0, whole(region.x)), y0 = std::max(0, whole(region.y));
  const int x1 = std::min(bgr.cols, whole(region.x + region.w)), y1 = std::min(bgr.rows, whole(region.y + region.h));
  if (x1 <= x0 || y1 <= y0 || (x0 == 0 && y0 == 0 && x1 == bgr.cols && y1 == bgr.rows)) return blend(bgr, cam, h, w, alpha);
  // outside the region: dimmed to half, np.rint(image * 0.5)
  cv::Mat out(bgr.size(), CV_8UC3);
  for (int y = 0; y < bgr.rows; ++y) {
    const uint8_t* src = bgr.ptr<uint8_t>(y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < bgr.cols * 3; ++x) dst[x] = static_cast<uint8_t>(std::nearbyint(static_cast<float>(src[x]) * 0.5f));
  }
  const cv::Rect box(x0, y0, x1 - x0, y1 - y0);
  blend(bgr(box).clone(), cam, h, w, alpha).copyTo(out(box));
  return out;
}

}  // namespace gradcam
