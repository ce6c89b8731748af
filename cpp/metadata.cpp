// gradcam.json read with nlohmann-json and checked against the fields the programs rely on.
#include "metadata.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

namespace gradcam {
namespace {

using nlohmann::json;

class Fields {
 public:
  Fields(const json& record, const std::string& source) : record_(record), source_(source) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw MetadataError(source_ + ": the gradcam metadata " + why + "; re-export the artifact with gradcam_model");
  }

  // record[key] as T; a missing key or a value of another JSON type is a MetadataError.
  template <typename T>
  T get(const std::string& key) const {
    const auto it = record_.find(key);
    if (it == record_.end()) fail("lacks '" + key + "'");
    try {
      return it->get<T>();
    } catch (const json::exception&) {
      fail("has '" + key + "' = " + it->dump() + ", which is not " + expected<T>());
    }
  }

  // A JSON null as an empty optional.
  template <typename T>
  std::optional<T> nullable(const std::string& key) const {
    if (record_.contains(key) && record_.at(key).is_null()) return std::nullopt;
    return get<T>(key);
  }

  int64_t positive(const std::string& key) const {
    const auto value = get<int64_t>(key);
    if (value < 1) fail("has '" + key + "' = " + std::to_string(value) + ", expected >= 1");
    return value;
  }

  std::pair<int64_t, int64_t> size(const std::string& key, const std::vector<int64_t>& hw) const {
    if (hw.size() != 2 || hw[0] < 1 || hw[1] < 1) fail("has a '" + key + "' that is not [height, width]");
    return {hw[0], hw[1]};
  }

 private:
  template <typename T>
  static std::string expected() {
    if constexpr (std::is_same_v<T, std::string>) return "a string";
    else if constexpr (std::is_same_v<T, bool>) return "a boolean";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_same_v<T, std::vector<std::string>>) return "a list of strings";
    else return "a list of numbers";
  }

  const json& record_;
  const std::string& source_;
};

}  // namespace

std::string Metadata::label(int64_t index) const {
  if (index >= 0 && static_cast<std::size_t>(index) < class_names.size()) return class_names[static_cast<std::size_t>(index)];
  return std::to_string(index);
}

std::string Metadata::summary() const {
  std::ostringstream out;
  out << "architecture=" << architecture << " method=" << method << " target_layer=" << target_layer
      << " num_classes=" << num_classes << " in_channels=" << in_channels << " input_size=";
  if (input_size) out << input_size->first << 'x' << input_size->second;
  else out << "dynamic";
  out << " top_k=" << top_k << " class_input=" << (class_input ? "true" : "false")
      << " schema_version=" << schema_version;
  return out.str();
}

Metadata parse_metadata(const std::string& text, const std::string& source) {
  // allow_exceptions=false: a parse failure becomes a discarded value and one message of ours,
  // not nlohmann's multi-part text.
  const json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded()) throw MetadataError(source + ": the gradcam metadata is not valid JSON");
  if (!record.is_object()) {
    throw MetadataError(source + ": the gradcam metadata is not a JSON object; re-export the artifact with gradcam_model");
  }
  const Fields f(record, source);

  Metadata meta;
  meta.schema_version = f.positive("schema_version");
  if (meta.schema_version > kSchemaVersion) {
    throw MetadataError(source + ": metadata schema version " + std::to_string(meta.schema_version) +
                        " is newer than this program understands (up to " + std::to_string(kSchemaVersion) +
                        "); rebuild it from a newer gradcam_model");
  }
  meta.method = f.get<std::string>("method");
  meta.target_layer = f.get<std::string>("target_layer");
  meta.architecture = f.get<std::string>("architecture");
  meta.format = f.get<std::string>("format");
  meta.num_classes = f.positive("num_classes");
  meta.in_channels = f.positive("in_channels");
  meta.top_k = f.positive("top_k");
  meta.class_input = f.get<bool>("class_input");
  meta.mean = f.get<std::vector<double>>("mean");
  meta.std = f.get<std::vector<double>>("std");
  if (const auto size = f.nullable<std::vector<int64_t>>("input_size")) meta.input_size = f.size("input_size", *size);
  meta.example_size = f.size("example_size", f.get<std::vector<int64_t>>("example_size"));
  meta.class_names = f.nullable<std::vector<std::string>>("class_names").value_or(std::vector<std::string>{});

  if (!meta.class_names.empty() && static_cast<int64_t>(meta.class_names.size()) != meta.num_classes) {
    f.fail("has " + std::to_string(meta.class_names.size()) + " class names for " + std::to_string(meta.num_classes) + " classes");
  }
  // The programs read images as 3-channel colour pictures, normalized per channel.
  if (meta.in_channels != 3) f.fail("has in_channels = " + std::to_string(meta.in_channels) + "; these programs read RGB images (3)");
  if (static_cast<int64_t>(meta.mean.size()) != meta.in_channels || static_cast<int64_t>(meta.std.size()) != meta.in_channels) {
    f.fail("has mean/std of another length than in_channels");
  }
  for (const double s : meta.std) {
    if (!(s > 0)) f.fail("has a std that is not positive");
  }
  if (meta.class_input && meta.top_k != 1) f.fail("combines a class input with top_k > 1");
  // Schema 2 records the preprocessing. These programs apply version 1's only: a stretch to the
  // input size (OpenCV area/bilinear on float pixels), RGB / 255. Anything else is refused, never
  // approximated: the map would explain pixels the model was not shown.
  if (meta.schema_version >= 2) {
    const json prep = f.get<json>("preprocessing");
    const auto refuse = [&](const std::string& field, const json& value) {
      throw MetadataError(source + ": the artifact's preprocessing has " + field + " = " + value.dump() +
                          ", which these programs cannot apply yet (they stretch the picture); "
                          "use the Python runtime (gradcam explain) for this artifact");
    };
    if (!prep.is_object()) f.fail("has a preprocessing record that is not an object");
    const std::pair<const char*, json> expected[] = {
        {"resize", "stretch"}, {"crop_pct", 1.0}, {"interpolation", "area"}, {"channel_order", "RGB"}, {"scale", 255.0}};
    for (const auto& [field, value] : expected) {
      const auto it = prep.find(field);
      if (it == prep.end()) f.fail(std::string("has a preprocessing record without ") + field);
      if (*it != value) refuse(field, *it);
    }
  }
  return meta;
}

}  // namespace gradcam
