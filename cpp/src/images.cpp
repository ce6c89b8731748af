// Image files found and decoded, overlays and guided pictures drawn, as gradcam_model.runtime does (images.h).
#include "gradcam/images.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "gradcam/error.h"

namespace fs = std::filesystem;

namespace gradcam {

const std::vector<std::string> kImageSuffixes{".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"};

namespace {

bool is_image(const fs::path& path) {
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::find(kImageSuffixes.begin(), kImageSuffixes.end(), suffix) != kImageSuffixes.end();
}

// The pictures in a folder, recursively, sorted element by element as pathlib sorts (std::filesystem::path's order).
std::vector<ImageInput> folder_images(const fs::path& folder) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code file_ec;
    if (is_image(it->path()) && fs::is_regular_file(it->path(), file_ec)) files.push_back(it->path());
  }
  if (ec) throw Error(kMissingFile, "cannot read folder " + folder.string() + ": " + ec.message());
  std::string suffixes;
  for (const std::string& s : kImageSuffixes) suffixes += (suffixes.empty() ? "" : ", ") + s;
  if (files.empty()) throw Error(kMissingFile, "folder " + folder.string() + " holds no images (" + suffixes + ")");
  std::sort(files.begin(), files.end());
  fs::path named = folder;
  if (named.filename().empty()) named = named.parent_path();  // "photos/" -> "photos"
  const std::string name = named.filename().empty() || named.filename() == "." ? "input" : named.filename().string();
  std::vector<ImageInput> found;
  for (const fs::path& file : files) {
    const fs::path relative = file.lexically_relative(folder);
    const std::string label = std::distance(relative.begin(), relative.end()) >= 2 ? relative.begin()->string() : "";
    found.push_back({file.string(), (fs::path(name) / fs::path(relative).replace_extension()).string(), label});
  }
  return found;
}

}  // namespace

std::vector<ImageInput> collect_images(const std::vector<std::string>& paths) {
  std::vector<ImageInput> found;
  for (const std::string& text : paths) {
    std::error_code ec;
    if (fs::is_directory(text, ec)) {
      for (ImageInput& input : folder_images(text)) found.push_back(std::move(input));
    } else {
      found.push_back({text, fs::path(text).stem().string(), ""});  // a missing file fails when it is loaded
    }
  }
  std::map<std::string, int> seen;
  for (ImageInput& input : found) {
    const int count = ++seen[input.key];
    if (count > 1) input.key += "-" + std::to_string(count);
  }
  return found;
}

namespace {

constexpr std::uintmax_t kProbeBytes = 2000000;  // only JPEG files this large can hold a picture worth decoding reduced

bool is_jpeg(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  char magic[3] = {};
  return file.read(magic, 3) && magic[0] == '\xff' && magic[1] == '\xd8' && magic[2] == '\xff';
}

cv::Mat decode(const std::string& path, int flags) {
  try {
    return cv::imread(path, flags);
  } catch (const cv::Exception&) {
    return {};  // some decoders throw on truncated data instead of returning an empty Mat
  }
}

// A large JPEG decoded at the smallest DCT scale that keeps its long side >= max_side (decode_image's probe).
cv::Mat decode_reduced(const std::string& path, int max_side) {
  const cv::Mat probe = decode(path, cv::IMREAD_REDUCED_COLOR_8);  // DCT scaling: cheap even for huge photos
  if (probe.empty()) return probe;
  const int long_side = std::max(probe.rows, probe.cols) * 8;
  int factor = 8;
  while (factor > 1 && long_side / factor < max_side) factor /= 2;
  if (factor == 8) return probe;
  return decode(path, factor == 4 ? cv::IMREAD_REDUCED_COLOR_4 : factor == 2 ? cv::IMREAD_REDUCED_COLOR_2 : cv::IMREAD_COLOR);
}

}  // namespace

cv::Mat load_image(const std::string& path, int max_side) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw Error(kMissingFile, path + ": no such image file");
  if (!fs::is_regular_file(status)) throw Error(kMissingFile, path + ": not a file");
  if (::access(path.c_str(), R_OK) != 0) throw Error(kMissingFile, path + ": not readable");
  cv::Mat image;
  if (max_side > 0 && fs::file_size(path, ec) >= kProbeBytes && is_jpeg(path)) image = decode_reduced(path, max_side);
  if (image.empty()) image = decode(path, cv::IMREAD_COLOR);
  if (image.empty()) throw Error(kBadImage, path + ": not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)");
  if (max_side > 0 && std::max(image.rows, image.cols) > max_side) {
    // Python: scale = max_side / long side; (max(1, round(w * scale)), max(1, round(h * scale))), half to even
    const double scale = static_cast<double>(max_side) / std::max(image.rows, image.cols);
    const cv::Size size(std::max(1, static_cast<int>(std::nearbyint(image.cols * scale))),
                        std::max(1, static_cast<int>(std::nearbyint(image.rows * scale))));
    cv::Mat reduced;
    cv::resize(image, reduced, size, 0, 0, cv::INTER_AREA);
    image = reduced;
  }
  return image;
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

cv::Mat guided_picture(const float* guided, int64_t h, int64_t w, const std::string& channel_order) {
  if (guided == nullptr || h < 1 || w < 1) {
    throw Error(kUsage, "a guided image of " + std::to_string(h) + "x" + std::to_string(w) +
                            "; expected a [3, H, W] gradient image of at least 1x1");
  }
  if (channel_order != "RGB" && channel_order != "BGR") {
    throw Error(kUsage, "channel order \"" + channel_order + "\"; expected RGB or BGR (the metadata's preprocessing)");
  }
  // numpy's float32 image.mean() and image.std() (population) over all 3 * h * w values, summed
  // here in double: within float32 rounding of numpy's pairwise float32 sums
  const std::size_t plane = static_cast<std::size_t>(h * w), count = 3 * plane;
  double sum = 0.0;
  for (std::size_t i = 0; i < count; ++i) sum += guided[i];
  const float mean = static_cast<float>(sum / static_cast<double>(count));
  double squares = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    const double d = guided[i] - mean;  // float32 difference, as numpy's arr - arrmean
    squares += d * d;
  }
  const float scale = static_cast<float>(std::sqrt(squares / static_cast<double>(count))) + 1e-5f;
  cv::Mat picture(static_cast<int>(h), static_cast<int>(w), CV_8UC3);
  for (int c = 0; c < 3; ++c) {
    // picture channel c is B, G, R; the input's planes are R, G, B (or B, G, R for a BGR input)
    const float* src = guided + static_cast<std::size_t>(channel_order == "RGB" ? 2 - c : c) * plane;
    for (std::size_t i = 0; i < plane; ++i) {
      // float32 throughout, as numpy with Python scalars (NEP 50); np.uint8 truncates, and a NaN casts to 0
      const float v = (src[i] - mean) / scale * 0.1f + 0.5f;
      picture.data[i * 3 + static_cast<std::size_t>(c)] = v >= 0.0f ? static_cast<uint8_t>(std::min(v, 1.0f) * 255.0f) : 0;
    }
  }
  return picture;
}

}  // namespace gradcam
