// The shared driver: options, image keys, batches, and the output folder written through
// a staging folder so that a failed run leaves nothing behind.
#include "explain.h"

#include <opencv2/imgcodecs.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <type_traits>

#include "error.h"
#include "images.h"
#include "preprocessing.h"
#include "output.h"

namespace fs = std::filesystem;

namespace gradcam {

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

namespace {

const char* kUsageText =
    "usage: %s ARTIFACT%s IMAGE... --out DIR [--class C] [--batch-size B] [--alpha A] [--threads T] [--cuda]\n"
    "          [--save-tensors] [--quiet]\n"
    "\n"
    "Explains image files (PNG, JPEG, BMP, TIFF, WebP) with a gradcam_model artifact: each image is\n"
    "resized and normalized as its metadata says, the images run in batches, and DIR receives\n"
    "overlays/<name>.png (a jet heat map over the picture; <name>-topK.png for further classes) and\n"
    "predictions.csv (the columns of `gradcam explain`).\n"
    "\n"
    "  --out DIR         output folder (created if missing)\n"
    "  --class C         class to explain, an index or a class name (artifacts with a class input)\n"
    "  --batch-size B    images per run (default 8)\n"
    "  --alpha A         heat-map weight in the overlays, in [0, 1] (default 0.4)\n"
    "  --threads T       intra-op CPU threads (default: the engine's choice)\n"
    "  --cuda            run on the first GPU\n"
    "  --save-tensors    also write DIR/tensors/{image,logits,probabilities,class_index,score,cam}.npy\n"
    "  --quiet           print nothing but errors\n"
    "\n"
    "exit codes: 0 ok, 2 usage, 3 missing file, 4 bad artifact, 5 some image unreadable (others explained),\n"
    "            6 run failed, 7 write failed\n";

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi) {
  char* end = nullptr;
  const long long n = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || n < lo || n > hi) {
    throw Error(kUsage, flag + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                              "], got '" + text + "'");
  }
  return n;
}

// Returns false for --help.
bool parse_args(int argc, char** argv, Options& opt) {
  std::vector<std::string> positional;
  bool has_out = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      inline_value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw Error(kUsage, arg + " needs a value (see --help)");
      return argv[++i];
    };
    auto flag = [&](bool& target) {
      if (inline_value) throw Error(kUsage, arg + " takes no value");
      target = true;
    };
    if (arg == "-h" || arg == "--help") return false;
    if (arg == "--out") {
      opt.out = value();
      has_out = true;
    } else if (arg == "--class") {
      opt.class_name = value();
    } else if (arg == "--batch-size") {
      opt.batch_size = parse_int(arg, value(), 1, 4096);
    } else if (arg == "--threads") {
      opt.threads = static_cast<int>(parse_int(arg, value(), 1, 1024));
    } else if (arg == "--alpha") {
      const std::string text = value();
      char* end = nullptr;
      opt.alpha = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !(opt.alpha >= 0.0 && opt.alpha <= 1.0)) {
        throw Error(kUsage, "--alpha must be in [0, 1], got '" + text + "'");
      }
    } else if (arg == "--cuda") {
      flag(opt.cuda);
    } else if (arg == "--save-tensors") {
      flag(opt.save_tensors);
    } else if (arg == "--quiet" || arg == "-q") {
      flag(opt.quiet);
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw Error(kUsage, "unknown option '" + arg + "' (see --help)");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 2) throw Error(kUsage, "expected ARTIFACT and at least one IMAGE (see --help)");
  if (!has_out || opt.out.empty()) throw Error(kUsage, "--out DIR is required (see --help)");
  opt.artifact = positional[0];
  opt.images.assign(positional.begin() + 1, positional.end());
  return true;
}

void require_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw Error(kMissingFile, what + " " + path + " does not exist");
  if (!fs::is_regular_file(status)) throw Error(kMissingFile, what + " " + path + " is not a file");
  if (::access(path.c_str(), R_OK) != 0) throw Error(kMissingFile, what + " " + path + " is not readable");
}

// --class as an index (-1: top class) or a class name, as `gradcam explain --class`.
int64_t resolve_class(const std::string& text, const Metadata& meta, const std::string& artifact) {
  if (!meta.class_input) {
    throw Error(kUsage, "--class needs an artifact exported with --class-input; " + artifact + " explains its top-" +
                              std::to_string(meta.top_k) + " classes");
  }
  char* end = nullptr;
  const long long index = std::strtoll(text.c_str(), &end, 10);
  if (!text.empty() && *end == '\0') {
    if (index < -1 || index >= meta.num_classes) {
      throw Error(kUsage, "--class " + text + " is out of range; expected 0.." + std::to_string(meta.num_classes - 1) +
                                " or -1 (top class)");
    }
    return index;
  }
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  for (std::size_t i = 0; i < meta.class_names.size(); ++i) {
    if (meta.class_names[i] == text) return static_cast<int64_t>(i);
  }
  for (std::size_t i = 0; i < meta.class_names.size(); ++i) {
    if (lower(meta.class_names[i]) == lower(text)) return static_cast<int64_t>(i);
  }
  if (meta.class_names.empty()) throw Error(kUsage, "--class '" + text + "': this artifact has no class names; give a class index");
  throw Error(kUsage, "--class '" + text + "' is not a class of this artifact");
}

// Output names per image: the file stem, "-2", "-3"... for repeated stems.
std::vector<std::string> image_keys(const std::vector<std::string>& images) {
  std::map<std::string, int> seen;
  std::vector<std::string> keys;
  for (const std::string& path : images) {
    const std::string stem = fs::path(path).stem().string();
    const int count = ++seen[stem];
    keys.push_back(count == 1 ? stem : stem + "-" + std::to_string(count));
  }
  return keys;
}

std::string csv_field(const std::string& text) {
  // Python's csv module (QUOTE_MINIMAL): quote fields holding a delimiter, quote or line break.
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string fixed6(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.6f", value);
  return buffer;
}

std::string fixed2(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.2f", value);
  return buffer;
}

template <typename T>
void append(std::vector<T>& to, const std::vector<T>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

// One run over the images: batches in, overlays and CSV rows out.
class Run {
 public:
  Run(const Options& opt, const char* program, Engine& engine, OutputFolder& out, std::optional<int64_t> target)
      : opt_(opt), program_(program), engine_(engine), meta_(engine.metadata()), out_(out), target_(target),
        keys_(image_keys(opt.images)), rows_(opt.images.size()) {}

  // Decodes and preprocesses images[start, stop), runs them as one batch, records the results.
  void batch(std::size_t start, std::size_t stop) {
    const auto [h, w] = meta_.target_size();
    const std::size_t size = static_cast<std::size_t>(3 * h * w);
    Batch batch;
    batch.h = h, batch.w = w;
    std::vector<std::size_t> members;
    std::vector<cv::Mat> pictures;
    std::vector<Region> regions;
    for (std::size_t i = start; i < stop; ++i) {
      cv::Mat bgr = load_image(opt_.images[i]);
      if (bgr.empty()) {
        skip(i, opt_.images[i] + ": not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)");
        continue;
      }
      batch.image.resize(batch.image.size() + size);
      try {
        regions.push_back(preprocess(bgr, meta_, batch.image.data() + batch.image.size() - size).region);
      } catch (const Error& e) {
        batch.image.resize(batch.image.size() - size);
        skip(i, opt_.images[i] + ": " + e.what());
        continue;
      }
      members.push_back(i);
      pictures.push_back(std::move(bgr));
    }
    if (members.empty()) return;
    batch.n = static_cast<int64_t>(members.size());
    if (meta_.class_input) batch.target_class.assign(members.size(), target_.value_or(-1));
    const Outputs result = engine_.run(batch);
    for (std::size_t j = 0; j < members.size(); ++j) record(result, static_cast<int64_t>(j), members[j], pictures[j], regions[j]);
    if (opt_.save_tensors) keep(batch, result);
  }

  // predictions.csv (and the tensors) into the staging folder.
  void finish() {
    std::string csv = "path,true_label,predicted_index,predicted_label,probability,explained_index,explained_label,"
                      "explained_score,region_x,region_y,region_w,region_h,overlay,error\n";
    for (const std::vector<std::string>& row : rows_) {
      for (std::size_t i = 0; i < row.size(); ++i) csv += (i ? "," : "") + csv_field(row[i]);
      csv += "\n";
    }
    out_.write("predictions.csv", csv.data(), csv.size());
    if (!opt_.save_tensors) return;
    const auto [h, w] = meta_.target_size();
    const Outputs& t = saved_;
    const std::pair<const char*, std::string> files[] = {
        {"image", npy(saved_images_, {t.n, 3, h, w})},
        {"logits", npy(t.logits, {t.n, t.num_classes})},
        {"probabilities", npy(t.probabilities, {t.n, t.num_classes})},
        {"class_index", npy(t.class_index, {t.n, t.k})},
        {"score", npy(t.score, {t.n, t.k})},
        {"cam", npy(t.cam, {t.n, t.k, t.h, t.w})},
    };
    for (const auto& [name, data] : files) out_.write("tensors/" + std::string(name) + ".npy", data.data(), data.size());
  }

  int failures() const { return failures_; }
  int explained() const { return explained_; }

 private:
  void skip(std::size_t i, const std::string& error) {
    std::fprintf(stderr, "%s: skipped: %s\n", program_, error.c_str());
    rows_[i] = {opt_.images[i], "", "", "", "", "", "", "", "", "", "", "", "", error};
    ++failures_;
  }

  // Sample n of the batch, image i: its overlays and its CSV row.
  void record(const Outputs& result, int64_t n, std::size_t i, const cv::Mat& picture, const Region& region) {
    const float* probabilities = result.probabilities.data() + n * result.num_classes;
    const int64_t top = std::max_element(probabilities, probabilities + result.num_classes) - probabilities;
    std::string indices, labels, scores, overlays;
    for (int64_t k = 0; k < result.k; ++k) {
      const std::size_t nk = static_cast<std::size_t>(n * result.k + k);
      const std::string sep = k ? ";" : "";
      indices += sep + std::to_string(result.class_index[nk]);
      labels += sep + meta_.label(result.class_index[nk]);
      scores += sep + fixed6(result.score[nk]);
      const cv::Mat image = overlay(picture, result.cam.data() + nk * result.h * result.w, result.h, result.w, opt_.alpha, region);
      std::vector<uint8_t> png;
      if (!cv::imencode(".png", image, png)) throw Error(kInternal, "OpenCV could not encode an overlay as PNG");
      const std::string name = "overlays/" + keys_[i] + (k ? "-top" + std::to_string(k + 1) : "") + ".png";
      out_.write(name, png.data(), png.size());
      overlays += sep + (fs::path(opt_.out) / name).string();
    }
    const std::string& path = opt_.images[i];
    rows_[i] = {path, "", std::to_string(top), meta_.label(top), fixed6(probabilities[top]), indices, labels, scores,
                fixed2(region.x), fixed2(region.y), fixed2(region.w), fixed2(region.h), overlays, ""};
    if (!opt_.quiet) {
      std::printf("%s: %s %.4f", path.c_str(), meta_.label(top).c_str(), probabilities[top]);
      if (indices != std::to_string(top)) std::printf(", explained %s", labels.c_str());
      std::printf("\n");
    }
    ++explained_;
  }

  void keep(const Batch& batch, const Outputs& result) {
    append(saved_images_, batch.image);
    append(saved_.logits, result.logits);
    append(saved_.probabilities, result.probabilities);
    append(saved_.class_index, result.class_index);
    append(saved_.score, result.score);
    append(saved_.cam, result.cam);
    saved_.n += result.n;
    saved_.num_classes = result.num_classes, saved_.k = result.k, saved_.h = result.h, saved_.w = result.w;
  }

  const Options& opt_;
  const char* program_;
  Engine& engine_;
  const Metadata& meta_;
  OutputFolder& out_;
  const std::optional<int64_t> target_;
  const std::vector<std::string> keys_;
  std::vector<std::vector<std::string>> rows_;  // the columns of `gradcam explain`'s predictions.csv
  Outputs saved_;                               // every batch's outputs, for --save-tensors
  std::vector<float> saved_images_;
  int failures_ = 0, explained_ = 0;
};

int explain(const Options& opt, const char* program, EngineFactory load) {
  require_file(opt.artifact, "artifact");
  for (const std::string& image : opt.images) require_file(image, "image");
  const auto t0 = std::chrono::steady_clock::now();
  const std::unique_ptr<Engine> engine = load(opt);
  const Metadata& meta = engine->metadata();
  std::optional<int64_t> target;
  if (opt.class_name) target = resolve_class(*opt.class_name, meta, opt.artifact);
  if (!opt.quiet) std::printf("metadata: %s\n", meta.summary().c_str());

  OutputFolder out(opt.out);
  Run run(opt, program, *engine, out, target);
  const auto t1 = std::chrono::steady_clock::now();
  const std::size_t step = static_cast<std::size_t>(opt.batch_size);
  for (std::size_t start = 0; start < opt.images.size(); start += step) {
    run.batch(start, std::min(opt.images.size(), start + step));
  }
  run.finish();
  out.commit();

  if (!opt.quiet) {
    using ms = std::chrono::duration<double, std::milli>;
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("explained %d of %zu images on %s (load %.0f ms, explain %.0f ms): overlays in %s, %s\n", run.explained(),
                opt.images.size(), engine->device().c_str(), ms(t1 - t0).count(), ms(t2 - t1).count(),
                (fs::path(opt.out) / "overlays").string().c_str(), (fs::path(opt.out) / "predictions.csv").string().c_str());
  }
  // each unreadable image already printed its one line
  return run.failures() ? kBadImage : kOk;
}

}  // namespace

int explain_main(int argc, char** argv, const char* program, const char* artifact_suffix, EngineFactory load) {
  try {
    Options opt;
    if (!parse_args(argc, argv, opt)) {
      std::printf(kUsageText, program, artifact_suffix);
      return kOk;
    }
    return explain(opt, program, load);
  } catch (const Error& f) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", program, first_line(f.what()).c_str());
    return f.code();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: internal error: %s\n", program, first_line(e.what()).c_str());
    return kInternal;
  }
}

}  // namespace gradcam
