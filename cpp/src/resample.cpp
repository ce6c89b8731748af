// Separable resampling with Pillow's arithmetic (see resample.h). Every double operation is
// written in numpy's order (and compiled without fused multiply-add), and the weight totals
// use numpy's pairwise summation, so the fixed-point weights are bit-identical to Python's.
#include "resample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace gradcam {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed-point weights for 8-bit images (Resample.c)

double bilinear(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double bicubic(double x) {
  const double a = -0.5;  // Pillow's bicubic
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

double box(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

// numpy's pairwise summation of a contiguous row (what weights.sum(axis=1) computes)
double pairwise_sum(const double* a, std::size_t n) {
  if (n < 8) {
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) sum += a[i];
    return sum;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::size_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) sum += a[i];
    return sum;
  }
  std::size_t half = n / 2;
  half -= half % 8;
  return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

// Per output pixel: the first input index and the fixed-point weights of its taps.
struct Coefficients {
  std::vector<int> first;
  std::vector<int64_t> fixed;  // [out, taps]
  int taps = 0;
};

Coefficients coefficients(int in_size, int out_size, const std::string& kind, bool antialias) {
  double (*filter)(double) = nullptr;
  double support = 0.0;
  if (kind == "bilinear") filter = bilinear, support = 1.0;
  else if (kind == "bicubic") filter = bicubic, support = 2.0;
  else if (kind == "box") filter = box, support = 0.5;
  else throw std::invalid_argument("unknown resampling filter " + kind);
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = antialias ? std::max(scale, 1.0) : 1.0;
  support = support * filter_scale;
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<std::size_t>(out_size));
  c.fixed.resize(static_cast<std::size_t>(out_size) * c.taps);
  std::vector<double> weights(static_cast<std::size_t>(c.taps));
  for (int i = 0; i < out_size; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    const int64_t first = std::max<int64_t>(static_cast<int64_t>(std::trunc(center - support + 0.5)), 0);
    const int64_t last = std::min<int64_t>(static_cast<int64_t>(std::trunc(center + support + 0.5)), in_size);
    for (int k = 0; k < c.taps; ++k) {
      const double position = static_cast<double>(first + k);
      weights[k] = k < last - first ? filter((position - center + 0.5) / filter_scale) : 0.0;
    }
    const double total = pairwise_sum(weights.data(), weights.size());
    for (int k = 0; k < c.taps; ++k) {
      const double w = total != 0.0 ? weights[k] / total : weights[k];
      const double shifted = w * static_cast<double>(1 << kPrecisionBits);
      c.fixed[static_cast<std::size_t>(i) * c.taps + k] =
          static_cast<int64_t>(w < 0 ? std::trunc(-0.5 + shifted) : std::trunc(0.5 + shifted));
    }
    c.first[i] = static_cast<int>(first);
  }
  return c;
}

uint8_t clip(int64_t total) {
  const int64_t v = (total + (int64_t{1} << (kPrecisionBits - 1))) >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
}

// One pass along the columns (horizontal: axis 1) or the rows (axis 0).
cv::Mat pass(const cv::Mat& image, int axis, int out_size, const std::string& kind, bool antialias) {
  const int channels = image.channels();
  const int in_size = axis == 1 ? image.cols : image.rows;
  const Coefficients c = coefficients(in_size, out_size, kind, antialias);
  cv::Mat out = axis == 1 ? cv::Mat(image.rows, out_size, image.type()) : cv::Mat(out_size, image.cols, image.type());
  for (int y = 0; y < out.rows; ++y) {
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < out.cols; ++x) {
      const int o = axis == 1 ? x : y;
      const int64_t* w = c.fixed.data() + static_cast<std::size_t>(o) * c.taps;
      for (int ch = 0; ch < channels; ++ch) {
        int64_t total = 0;
        for (int k = 0; k < c.taps; ++k) {
          const int at = std::min(c.first[o] + k, in_size - 1);  // taps past the edge weigh 0
          const uint8_t v = axis == 1 ? image.ptr<uint8_t>(y)[at * channels + ch] : image.ptr<uint8_t>(at)[x * channels + ch];
          total += static_cast<int64_t>(v) * w[k];
        }
        dst[x * channels + ch] = clip(total);
      }
    }
  }
  return out;
}

std::vector<int> nearest_index(int in_size, int out_size) {
  // Pillow's ImagingScaleAffine: x = 0.5 * step, then step added once per pixel, truncated
  const double step = static_cast<double>(in_size) / static_cast<double>(out_size);
  std::vector<int> index(static_cast<std::size_t>(out_size));
  double position = step * 0.5;
  for (int i = 0; i < out_size; ++i) {
    if (i) position += step;
    index[i] = std::min(static_cast<int>(static_cast<int64_t>(position)), in_size - 1);
  }
  return index;
}

}  // namespace

cv::Mat resample(const cv::Mat& image, int rows, int cols, const std::string& kind, bool antialias) {
  if (image.depth() != CV_8U) throw std::invalid_argument("resample takes 8-bit pictures");
  if (rows != image.rows && cols != image.cols &&
      static_cast<double>(rows) / image.rows < std::min(1.0, static_cast<double>(cols) / image.cols)) {
    // Pillow 13 runs the vertical pass first where it shrinks more than the horizontal one
    return pass(pass(image, 0, rows, kind, antialias), 1, cols, kind, antialias);
  }
  cv::Mat out = image;
  if (cols != image.cols) out = pass(out, 1, cols, kind, antialias);
  if (rows != image.rows) out = pass(out, 0, rows, kind, antialias);
  return out;
}

cv::Mat nearest(const cv::Mat& image, int rows, int cols) {
  const std::vector<int> ys = nearest_index(image.rows, rows), xs = nearest_index(image.cols, cols);
  const std::size_t pixel = image.elemSize();
  cv::Mat out(rows, cols, image.type());
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = image.ptr<uint8_t>(ys[y]);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < cols; ++x) std::copy_n(src + xs[x] * pixel, pixel, dst + x * pixel);
  }
  return out;
}

}  // namespace gradcam
