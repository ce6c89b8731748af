// The library test driver of tests/test_cpp.py (not installed). Modes:
//
//   gradcam_library_check threads ARTIFACT IMAGE...   4 threads x 50 calls on one Explainer == serial results
//   gradcam_library_check forms ARTIFACT IMAGE        cv::Mat, RGB/BGR/RGBA/grey buffers and tensors agree
//                                                     (guided outputs included); prints the guided output's shape
//   gradcam_library_check errors ARTIFACT IMAGE       bad input: one line "case<TAB>code<TAB>message" each,
//                                                     and the object still gives the same result afterwards
//   gradcam_library_check bench ARTIFACT BATCH IMAGE...  seconds to decode and explain the files in batches
//                                                     (after one warm-up batch), for scripts/bench_cpp_library.py
//
// Prints what it checked; exits 1 with a line saying what differed.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gradcam/gradcam.h"

namespace {

using gradcam::Explanation;

bool same(const Explanation& a, const Explanation& b) {
  return a.logits == b.logits && a.probabilities == b.probabilities && a.classes == b.classes && a.scores == b.scores &&
         a.maps == b.maps && a.labels == b.labels && a.predicted == b.predicted && a.guided == b.guided &&
         a.guided_height == b.guided_height && a.guided_width == b.guided_width;
}

int fail(const std::string& what) {
  std::printf("FAILED: %s\n", what.c_str());
  return 1;
}

// One intra-op thread: ONNX Runtime's threaded reductions may sum in another order from run to
// run, which would make "identical" mean "within 1e-6"; with one thread per call it is exact.
gradcam::Options one_thread() {
  gradcam::Options options;
  options.threads = 1;
  return options;
}

int threads(const std::string& artifact, const std::vector<std::string>& files) {
  const gradcam::Explainer explainer(artifact, one_thread());
  std::vector<cv::Mat> pictures;
  for (const std::string& f : files) pictures.push_back(gradcam::load_image(f));
  std::vector<Explanation> serial;
  for (const cv::Mat& p : pictures) serial.push_back(explainer.explain(std::vector<cv::Mat>{p})[0]);
  constexpr int kThreads = 4, kCalls = 50;
  std::vector<std::vector<Explanation>> got(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      try {
        for (int c = 0; c < kCalls; ++c) got[t].push_back(explainer.explain(std::vector<cv::Mat>{pictures[(t + c) % pictures.size()]})[0]);
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (std::thread& w : workers) w.join();
  for (int t = 0; t < kThreads; ++t) {
    if (!errors[t].empty()) return fail("thread " + std::to_string(t) + ": " + errors[t]);
    for (int c = 0; c < kCalls; ++c) {
      if (!same(got[t][c], serial[(t + c) % pictures.size()])) {
        return fail("thread " + std::to_string(t) + " call " + std::to_string(c) + " differs from the serial result");
      }
    }
  }
  std::printf("threads: %d x %d calls identical to serial\n", kThreads, kCalls);
  return 0;
}

gradcam::ImageView view(const cv::Mat& m, bool bgr) {
  gradcam::ImageView v;
  v.data = m.data, v.size = m.step * static_cast<std::size_t>(m.rows);
  v.rows = m.rows, v.cols = m.cols, v.channels = m.channels(), v.stride = m.step, v.bgr = bgr;
  return v;
}

int forms(const std::string& artifact, const std::string& file) {
  const gradcam::Explainer explainer(artifact, one_thread());
  const cv::Mat bgr = gradcam::load_image(file);
  cv::Mat rgb, rgba, bgra;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::cvtColor(bgr, rgba, cv::COLOR_BGR2RGBA);
  cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
  const Explanation reference = explainer.explain(std::vector<cv::Mat>{bgr})[0];
  const std::pair<const char*, Explanation> cases[] = {
      {"rgb buffer", explainer.explain_buffers({view(rgb, false)})[0]},
      {"bgr buffer", explainer.explain_buffers({view(bgr, true)})[0]},
      {"rgba buffer", explainer.explain_buffers({view(rgba, false)})[0]},
      {"bgra cv::Mat", explainer.explain(std::vector<cv::Mat>{bgra})[0]},
  };
  for (const auto& [name, e] : cases) {
    if (!same(e, reference) || e.region.w != reference.region.w) return fail(std::string(name) + " differs from the cv::Mat");
  }
  gradcam::Region region;
  const std::vector<float> input = explainer.preprocess(bgr, &region);
  const auto [h, w] = explainer.metadata().target_size();
  if (!same(explainer.explain_inputs(input.data(), 1, h, w)[0], reference)) return fail("the tensor differs from the cv::Mat");
  std::printf("forms: 4 buffers and a tensor identical to the cv::Mat; region %.2f %.2f %.2f %.2f; ", region.x, region.y,
              region.w, region.h);
  if (reference.guided.empty()) std::printf("no guided output\n");
  else std::printf("guided %zu x 3 x %lld x %lld\n", reference.classes.size(), static_cast<long long>(reference.guided_height),
                   static_cast<long long>(reference.guided_width));
  return 0;
}

int errors(const std::string& artifact, const std::string& file) {
  const gradcam::Explainer explainer(artifact, one_thread());
  const cv::Mat bgr = gradcam::load_image(file);
  const Explanation reference = explainer.explain(std::vector<cv::Mat>{bgr})[0];
  const auto& meta = explainer.metadata();
  gradcam::ImageView short_rows = view(bgr, true);
  short_rows.stride = 5;
  gradcam::ImageView truncated = view(bgr, true);
  truncated.size -= 1;
  gradcam::ImageView two_channels = view(bgr, true);
  two_channels.channels = 2;
  const cv::Mat deep(8, 8, CV_16UC3, cv::Scalar(1000, 2000, 3000));
  const std::vector<float> zeros(3 * 5 * 7);
  const std::vector<std::pair<const char*, std::function<void()>>> cases = {
      {"missing-artifact", [] { gradcam::Explainer missing("no/such/model.onnx"); }},
      {"corrupt-artifact", [&] { gradcam::Explainer corrupt(file); }},  // a picture is not an ONNX model
      {"not-a-picture", [&] { gradcam::load_image(artifact); }},
      {"missing-picture", [] { gradcam::load_image("no/such/picture.png"); }},
      {"empty-picture", [&] { explainer.explain(std::vector<cv::Mat>{cv::Mat()}); }},
      {"16-bit-picture", [&] { explainer.explain(std::vector<cv::Mat>{bgr, deep}); }},
      {"two-channel-buffer", [&] { explainer.explain_buffers({two_channels}); }},
      {"short-stride-buffer", [&] { explainer.explain_buffers({short_rows}); }},
      {"truncated-buffer", [&] { explainer.explain_buffers({truncated}); }},
      {"null-buffer", [&] { explainer.explain_buffers({gradcam::ImageView{}}); }},
      {"class-out-of-range", [&] { explainer.explain(std::vector<cv::Mat>{bgr}, {meta.num_classes}); }},
      {"classes-per-picture", [&] { explainer.explain(std::vector<cv::Mat>{bgr, bgr}, {0}); }},
      {"no-tensors", [&] { explainer.explain_inputs(zeros.data(), 0, 5, 7); }},
      {"overlay-class", [&] { gradcam::overlay(bgr, reference, 9); }},
      {"no-guided-output", [&] { gradcam::guided_picture(reference, meta, 0); }},
      {"guided-channel-order", [&] { gradcam::guided_picture(zeros.data(), 5, 7, "RGBA"); }},
      {"empty-guided", [&] { gradcam::guided_picture(zeros.data(), 0, 7); }},
  };
  for (const auto& [name, call] : cases) {
    try {
      call();
      return fail(std::string(name) + " raised nothing");
    } catch (const gradcam::Error& e) {
      std::printf("%s\t%d\t%s\n", name, e.code(), e.what());
    }
    if (!same(explainer.explain(std::vector<cv::Mat>{bgr})[0], reference)) return fail(std::string("the result changed after ") + name);
  }
  std::printf("usable after every error\n");
  return 0;
}

int bench(const std::string& artifact, std::size_t batch, const std::vector<std::string>& files) {
  const gradcam::Explainer explainer(artifact);  // ONNX Runtime's default threads, as the Python runtime
  const auto run = [&](std::size_t start, std::size_t stop) {
    std::vector<cv::Mat> pictures;
    for (std::size_t i = start; i < stop; ++i) pictures.push_back(gradcam::load_image(files[i]));
    return explainer.explain(pictures).size();
  };
  run(0, std::min(batch, files.size()));  // warm-up: session arenas, kernel selection
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t explained = 0;
  for (std::size_t start = 0; start < files.size(); start += batch) explained += run(start, std::min(files.size(), start + batch));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("bench: %zu images in %.3f s\n", explained, seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 3) return fail("usage: gradcam_library_check threads|forms|errors ARTIFACT IMAGE...");
  try {
    if (args[0] == "threads") return threads(args[1], std::vector<std::string>(args.begin() + 2, args.end()));
    if (args[0] == "forms") return forms(args[1], args[2]);
    if (args[0] == "errors") return errors(args[1], args[2]);
    if (args[0] == "bench") return bench(args[1], std::stoul(args[2]), std::vector<std::string>(args.begin() + 3, args.end()));
  } catch (const gradcam::Error& e) {
    return fail(std::string("unexpected error ") + std::to_string(e.code()) + ": " + e.what());
  }
  return fail("unknown mode " + args[0]);
}
