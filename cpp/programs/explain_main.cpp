// The shared driver: options, batches through the library's Explainer, and the output folder
// written through a staging folder so that a failed run leaves nothing behind.
#include "explain_main.h"

#include <opencv2/imgcodecs.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <type_traits>

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
    "usage: %s ARTIFACT%s IMAGE_OR_FOLDER... --out DIR [--class C] [--batch-size B] [--alpha A] [--threads T] [--cuda]\n"
    "          [--save-tensors] [--quiet]\n"
    "\n"
    "Explains image files (PNG, JPEG, BMP, TIFF, WebP), and the pictures in folders (recursively), with a\n"
    "gradcam_model artifact: each picture is preprocessed as its metadata records, the pictures run in\n"
    "batches, and DIR receives overlays/<name>.png (a jet heat map over the explained region; <name>-topK.png\n"
    "for further classes) and predictions.csv (the columns of `gradcam explain`); an artifact of a guided\n"
    "method (guided-backprop, guided-gradcam) also gives guided/<name>.png, each overlay's guided gradient\n"
    "picture at the network input's size. A missing or unreadable picture gets an error row and the run\n"
    "carries on (exit 5).\n"
    "\n"
    "  --out DIR         output folder (created if missing)\n"
    "  --class C         class to explain, an index or a class name (artifacts with a class input)\n"
    "  --batch-size B    images per run (default 8)\n"
    "  --alpha A         heat-map weight in the overlays, in [0, 1] (default 0.4)\n"
    "  --threads T       intra-op CPU threads (default: the engine's choice)\n"
    "  --cuda            run on the first GPU\n"
    "  --save-tensors    also write DIR/tensors/{image,logits,probabilities,class_index,score,cam}.npy\n"
    "                    (and guided.npy for a guided method)\n"
    "  --quiet           print nothing but errors\n"
    "\n"
    "exit codes: 0 ok, 2 usage, 3 missing artifact or empty folder, 4 bad artifact, 5 some image missing or\n"
    "            unreadable (the others explained),\n"
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
bool parse_args(int argc, char** argv, CliOptions& opt) {
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

std::string csv_field(const std::string& text) {
  // Python's csv module (QUOTE_MINIMAL): quote fields holding a delimiter, quote or line break.
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string fixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

// libjpeg prints warnings such as "Premature end of JPEG file" straight to stderr, which
// would break the one-line error contract; fd 2 points to /dev/null while a picture decodes
// (the program decodes on one thread, while the engine is idle).
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

// Decoded as `gradcam explain` decodes: no larger than kDefaultMaxSide on the long side.
cv::Mat load_quietly(const std::string& path) {
  const SilencedStderr quiet;
  return load_image(path, kDefaultMaxSide);
}

template <typename T>
void append(std::vector<T>& to, const std::vector<T>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

// One run over the pictures: batches in, overlays and CSV rows out.
class Run {
 public:
  Run(const CliOptions& opt, const char* program, const Explainer& explainer, OutputFolder& out, std::optional<int64_t> target,
      std::vector<ImageInput> images)
      : opt_(opt), program_(program), explainer_(explainer), meta_(explainer.metadata()), out_(out), target_(target),
        images_(std::move(images)), rows_(images_.size()) {}

  std::size_t size() const { return images_.size(); }

  // Decodes and preprocesses images[start, stop), runs them as one batch, records the results.
  void batch(std::size_t start, std::size_t stop) {
    const auto [h, w] = meta_.target_size();
    std::vector<float> inputs;
    std::vector<std::size_t> members;
    std::vector<cv::Mat> pictures;
    std::vector<Region> regions;
    for (std::size_t i = start; i < stop; ++i) {
      try {
        cv::Mat bgr = load_quietly(images_[i].path);
        Region region;
        append(inputs, explainer_.preprocess(bgr, &region));
        regions.push_back(region);
        pictures.push_back(std::move(bgr));
        members.push_back(i);
      } catch (const Error& e) {
        skip(i, e.what());
      }
    }
    if (members.empty()) return;
    const int64_t n = static_cast<int64_t>(members.size());
    std::vector<int64_t> classes;
    if (target_) classes.assign(members.size(), *target_);
    std::vector<Explanation> results = explainer_.explain_inputs(inputs.data(), n, h, w, classes);
    for (std::size_t j = 0; j < members.size(); ++j) {
      results[j].region = regions[j];
      record(results[j], members[j], pictures[j]);
    }
    if (opt_.save_tensors) {
      append(saved_inputs_, inputs);
      for (const Explanation& e : results) saved_.push_back(std::move(e));
    }
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
    if (opt_.save_tensors) save_tensors();
  }

  int failures() const { return failures_; }
  int explained() const { return explained_; }

 private:
  void skip(std::size_t i, const std::string& error) {
    std::fprintf(stderr, "%s: skipped: %s\n", program_, first_line(error).c_str());
    rows_[i] = {images_[i].path, images_[i].label, "", "", "", "", "", "", "", "", "", "", "", first_line(error)};
    ++failures_;
  }

  // Picture i's overlays and CSV row.
  void record(const Explanation& e, std::size_t i, const cv::Mat& picture) {
    std::string indices, labels, scores, overlays;
    for (std::size_t k = 0; k < e.classes.size(); ++k) {
      const std::string sep = k ? ";" : "";
      indices += sep + std::to_string(e.classes[k]);
      labels += sep + e.labels[k];
      scores += sep + fixed(e.scores[k], 6);
      // as gradcam explain: a guided artifact's guided picture under the overlay's name
      const std::string file = images_[i].key + (k ? "-top" + std::to_string(k + 1) : "") + ".png";
      if (!e.guided.empty()) write_png("guided/" + file, guided_picture(e, meta_, k));
      write_png("overlays/" + file, overlay(picture, e, k, opt_.alpha));
      overlays += sep + (fs::path(opt_.out) / "overlays" / file).string();
    }
    const std::string& path = images_[i].path;
    const float probability = e.probabilities[static_cast<std::size_t>(e.predicted)];
    const std::string top = meta_.label(e.predicted);
    rows_[i] = {path, images_[i].label, std::to_string(e.predicted), top, fixed(probability, 6), indices, labels, scores,
                fixed(e.region.x, 2), fixed(e.region.y, 2), fixed(e.region.w, 2), fixed(e.region.h, 2), overlays, ""};
    if (!opt_.quiet) {
      std::printf("%s: %s %.4f", path.c_str(), top.c_str(), probability);
      if (indices != std::to_string(e.predicted)) std::printf(", explained %s", labels.c_str());
      std::printf("\n");
    }
    ++explained_;
  }

  void write_png(const std::string& name, const cv::Mat& picture) {
    std::vector<uint8_t> png;
    if (!cv::imencode(".png", picture, png)) throw Error(kInternal, "OpenCV could not encode " + name + " as PNG");
    out_.write(name, png.data(), png.size());
  }

  void save_tensors() {
    const auto [h, w] = meta_.target_size();
    std::vector<float> logits, probabilities, score, cam, guided;
    std::vector<int64_t> class_index;
    for (const Explanation& e : saved_) {
      append(logits, e.logits), append(probabilities, e.probabilities), append(class_index, e.classes);
      append(score, e.scores), append(cam, e.maps), append(guided, e.guided);
    }
    const int64_t n = static_cast<int64_t>(saved_.size()), c = meta_.num_classes;
    const int64_t k = n ? static_cast<int64_t>(saved_[0].classes.size()) : 0;
    const int64_t mh = n ? saved_[0].height : h, mw = n ? saved_[0].width : w;
    const std::pair<const char*, std::string> files[] = {
        {"image", npy(saved_inputs_, {n, 3, h, w})},   {"logits", npy(logits, {n, c})},
        {"probabilities", npy(probabilities, {n, c})}, {"class_index", npy(class_index, {n, k})},
        {"score", npy(score, {n, k})},                 {"cam", npy(cam, {n, k, mh, mw})},
    };
    for (const auto& [name, data] : files) out_.write("tensors/" + std::string(name) + ".npy", data.data(), data.size());
    if (is_guided(meta_.method)) {
      const std::string data = npy(guided, {n, k, 3, h, w});  // at the network input's size
      out_.write("tensors/guided.npy", data.data(), data.size());
    }
  }

  const CliOptions& opt_;
  const char* program_;
  const Explainer& explainer_;
  const Metadata& meta_;
  OutputFolder& out_;
  const std::optional<int64_t> target_;
  const std::vector<ImageInput> images_;
  std::vector<std::vector<std::string>> rows_;  // the columns of `gradcam explain`'s predictions.csv
  std::vector<Explanation> saved_;              // every explained picture, for --save-tensors
  std::vector<float> saved_inputs_;
  int failures_ = 0, explained_ = 0;
};

int explain(const CliOptions& opt, const char* program, BackendFactory open) {
  require_file(opt.artifact, "artifact");
  std::vector<ImageInput> images = collect_images(opt.images);
  const auto t0 = std::chrono::steady_clock::now();
  const Explainer explainer(open(opt));
  const Metadata& meta = explainer.metadata();
  std::optional<int64_t> target;
  if (opt.class_name) target = resolve_class(*opt.class_name, meta, opt.artifact);
  if (!opt.quiet) std::printf("metadata: %s\n", meta.summary().c_str());

  OutputFolder out(opt.out);
  Run run(opt, program, explainer, out, target, std::move(images));
  const auto t1 = std::chrono::steady_clock::now();
  const std::size_t step = static_cast<std::size_t>(opt.batch_size);
  for (std::size_t start = 0; start < run.size(); start += step) run.batch(start, std::min(run.size(), start + step));
  run.finish();
  out.commit();

  if (!opt.quiet) {
    using ms = std::chrono::duration<double, std::milli>;
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("explained %d of %zu images on %s (load %.0f ms, explain %.0f ms): overlays in %s, %s\n", run.explained(),
                run.size(), explainer.device().c_str(), ms(t1 - t0).count(), ms(t2 - t1).count(),
                (fs::path(opt.out) / "overlays").string().c_str(), (fs::path(opt.out) / "predictions.csv").string().c_str());
  }
  // each unreadable image already printed its one line
  return run.failures() ? kBadImage : kOk;
}

}  // namespace

int explain_main(int argc, char** argv, const char* program, const char* artifact_suffix, BackendFactory open) {
  try {
    CliOptions opt;
    if (!parse_args(argc, argv, opt)) {
      std::printf(kUsageText, program, artifact_suffix);
      return kOk;
    }
    return explain(opt, program, open);
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
