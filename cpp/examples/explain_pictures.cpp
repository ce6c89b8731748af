// explain_pictures ARTIFACT.onnx OUT_DIR PICTURE...
//
// Explains pictures with the gradcam library and writes, per picture i, OUT_DIR/<i>.png (the
// overlay of the top explained class), OUT_DIR/<i>.input.f32 (the network input, float32
// [3, h, w]) and OUT_DIR/<i>.maps.f32 (the maps, float32 [K, h, w]); prints one line per picture.
#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <gradcam/gradcam.h>

namespace {

void write_floats(const std::string& path, const float* data, std::size_t count) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
  if (!file) throw gradcam::Error(gradcam::kWriteFailed, "cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: explain_pictures ARTIFACT.onnx OUT_DIR PICTURE...\n");
    return gradcam::kUsage;
  }
  try {
    // [docs:example]
    gradcam::Options options;
    options.threads = 2;
    const gradcam::Explainer explainer(argv[1], options);  // one per process; explain() is thread-safe

    std::vector<cv::Mat> pictures;
    for (int i = 3; i < argc; ++i) pictures.push_back(gradcam::load_image(argv[i]));  // BGR, as cv::imread
    const std::vector<gradcam::Explanation> results = explainer.explain(pictures);  // one batch

    for (std::size_t i = 0; i < results.size(); ++i) {
      const gradcam::Explanation& r = results[i];
      std::printf("%s: %s %.4f, explained %s (%.4f)\n", argv[3 + i], explainer.metadata().label(r.predicted).c_str(),
                  r.probabilities[r.predicted], r.labels[0].c_str(), r.scores[0]);
      cv::imwrite(std::string(argv[2]) + "/" + std::to_string(i) + ".png", gradcam::overlay(pictures[i], r));
    // [docs:end]
      const std::vector<float> input = explainer.preprocess(pictures[i]);
      write_floats(std::string(argv[2]) + "/" + std::to_string(i) + ".input.f32", input.data(), input.size());
      write_floats(std::string(argv[2]) + "/" + std::to_string(i) + ".maps.f32", r.maps.data(), r.maps.size());
    }
  } catch (const gradcam::Error& e) {
    std::fprintf(stderr, "explain_pictures: error: %s\n", e.what());
    return e.code();
  }
  return 0;
}
