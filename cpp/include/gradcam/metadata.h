// The artifact metadata (gradcam.json, written by gradcam_model.export.metadata): the TorchScript
// extra file or the ONNX metadata_props key of that name. Part of the gradcam library's public API.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace gradcam {

constexpr int64_t kSchemaVersion = 2;  // the newest schema these programs understand
constexpr const char* kMetadataKey = "gradcam.json";

// The guided methods' sixth output, float32 [N, K, 3, H, W] at the network input's size: each explained
// class's signed, unnormalized input gradient (gradcam_model.contract.GUIDED_OUTPUT, GUIDED_METHODS).
constexpr const char* kGuidedOutput = "guided";
bool is_guided(const std::string& method);
// An artifact's outputs in order, as gradcam_model.contract.output_names: logits, probabilities,
// class_index, score, cam, then guided for a guided method.
std::vector<std::string> output_names(const std::string& method);

// How a picture becomes the network input (schema 2's "preprocessing" record; version-1
// artifacts read as these defaults: a stretch with OpenCV's area average). The fields and their
// meaning are gradcam_model.contract.Preprocessing's.
struct Preprocessing {
  std::string resize = "stretch";          // "stretch" or "shorter" (side, then centre crop)
  double crop_pct = 1.0;                   // (0, 1]: resize to floor(size / crop_pct) before the crop
  std::optional<int64_t> resize_size;      // "shorter": the shorter side's length at the example size
  std::string interpolation = "area";      // "nearest", "bilinear", "bicubic" (Pillow's), "area" (OpenCV's)
  bool antialias = true;                   // widen the Pillow filter when shrinking
  std::string channel_order = "RGB";       // "RGB" or "BGR"
  double scale = 255.0;                    // pixels are divided by this before (x - mean) / std
};

// The fields a runtime needs to preprocess images, run the graph and label its outputs.
struct Metadata {
  int64_t schema_version = 0;
  std::string method;
  std::string target_layer;
  std::string architecture;
  std::string format;
  int64_t num_classes = 0;
  int64_t in_channels = 0;
  int64_t top_k = 1;
  bool class_input = false;
  std::optional<std::pair<int64_t, int64_t>> input_size;  // empty: height and width are dynamic
  std::pair<int64_t, int64_t> example_size{0, 0};         // the export size: the resize target when dynamic
  std::vector<std::string> class_names;                   // empty: unnamed classes
  std::vector<double> mean;
  std::vector<double> std;
  Preprocessing preprocessing;

  // class_names[index] when there are names, else the index as text.
  std::string label(int64_t index) const;
  // The (height, width) images are resized to, as gradcam_model.runtime.target_size.
  std::pair<int64_t, int64_t> target_size() const { return input_size ? *input_size : example_size; }
  // One line of key=value pairs, e.g. for logs.
  std::string summary() const;
};

// Parses and validates gradcam.json; `source` (the artifact path) starts every error message.
// Throws Error(kBadArtifact) for a record that is malformed, incomplete, too new, or whose
// preprocessing this library cannot apply (naming the field).
Metadata parse_metadata(const std::string& text, const std::string& source);

}  // namespace gradcam
