// gradcam.json read with nlohmann-json and checked against the fields the library relies on.
#include "gradcam/metadata.h"

#include "gradcam/error.h"

#include <nlohmann/json.hpp>
#include <algorithm>
#include <initializer_list>
#include <sstream>
#include <type_traits>

namespace gradcam {
namespace {

using nlohmann::json;

class Fields {
 public:
  Fields(const json& record, const std::string& source) : record_(record), source_(source) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw Error(kBadArtifact, source_ + ": the gradcam metadata " + why + "; re-export the artifact with gradcam_model");
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

// The recorded preprocessing, checked as gradcam_model.contract.Preprocessing.problems(): a field
// these programs do not know, or a value they cannot apply, is refused naming the field, never
// approximated (the map would explain pixels the model was not shown).
Preprocessing parse_preprocessing(const json& record, const std::string& source) {
  const auto refuse = [&](const std::string& what) {
    throw Error(kBadArtifact, source + ": this program cannot apply the recorded preprocessing: " + what);
  };
  if (!record.is_object()) refuse("the record is not an object but " + record.dump());
  const char* known[] = {"resize", "crop_pct", "resize_size", "interpolation", "antialias", "channel_order", "scale"};
  for (const auto& item : record.items()) {
    if (std::find(std::begin(known), std::end(known), item.key()) == std::end(known)) {
      refuse("unknown field '" + item.key() + "' = " + item.value().dump() + "; rebuild it from a newer gradcam_model");
    }
  }
  Preprocessing prep;
  const auto field = [&](const char* key, auto& to, bool (json::*is)() const noexcept, const char* expected) {
    const auto it = record.find(key);
    if (it == record.end()) return;
    if (!((*it).*is)()) refuse(std::string(key) + " " + it->dump() + " (expected " + expected + ")");
    it->get_to(to);
  };
  const auto one_of = [&](const char* key, const std::string& value, std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
      if (value == a) return;
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    refuse(std::string(key) + " \"" + value + "\" (expected one of: " + list + ")");
  };
  field("resize", prep.resize, &json::is_string, "a string");
  field("interpolation", prep.interpolation, &json::is_string, "a string");
  field("channel_order", prep.channel_order, &json::is_string, "a string");
  field("crop_pct", prep.crop_pct, &json::is_number, "a number in (0, 1]");
  field("scale", prep.scale, &json::is_number, "a positive number");
  field("antialias", prep.antialias, &json::is_boolean, "true or false");
  const auto size = record.find("resize_size");
  if (size != record.end() && !size->is_null()) {
    if (!size->is_number_integer() || size->get<int64_t>() < 1) refuse("resize_size " + size->dump() + " (expected a positive integer)");
    prep.resize_size = size->get<int64_t>();
  }
  one_of("resize", prep.resize, {"stretch", "shorter"});
  one_of("interpolation", prep.interpolation, {"nearest", "bilinear", "bicubic", "area"});
  one_of("channel_order", prep.channel_order, {"RGB", "BGR"});
  if (!(prep.crop_pct > 0.0 && prep.crop_pct <= 1.0)) refuse("crop_pct " + record.at("crop_pct").dump() + " (expected a number in (0, 1])");
  if (!(prep.scale > 0.0)) refuse("scale " + record.at("scale").dump() + " (expected a positive number)");
  if (prep.resize_size && prep.resize != "shorter") {
    refuse("resize_size " + std::to_string(*prep.resize_size) + " with resize \"" + prep.resize + "\" (only \"shorter\" takes one)");
  }
  return prep;
}

}  // namespace

bool is_guided(const std::string& method) { return method == "guided-backprop" || method == "guided-gradcam"; }

std::vector<std::string> output_names(const std::string& method) {
  std::vector<std::string> names{"logits", "probabilities", "class_index", "score", "cam"};
  if (is_guided(method)) names.emplace_back(kGuidedOutput);
  return names;
}

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
  if (record.is_discarded()) throw Error(kBadArtifact, source + ": the gradcam metadata is not valid JSON");
  if (!record.is_object()) {
    throw Error(kBadArtifact, source + ": the gradcam metadata is not a JSON object; re-export the artifact with gradcam_model");
  }
  const Fields f(record, source);

  Metadata meta;
  meta.schema_version = f.positive("schema_version");
  if (meta.schema_version > kSchemaVersion) {
    throw Error(kBadArtifact, source + ": metadata schema version " + std::to_string(meta.schema_version) +
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
  if (meta.schema_version >= 2) meta.preprocessing = parse_preprocessing(f.get<json>("preprocessing"), source);
  return meta;
}

}  // namespace gradcam
