// Validation of gradcam.json against the fields the runner relies on.
#include "metadata.h"

#include <sstream>

#include "json.h"

namespace gradcam {
namespace {

using json::Value;

class Fields {
 public:
  Fields(const Value& record, const std::string& source) : record_(record), source_(source) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw MetadataError(source_ + ": the gradcam metadata " + why + "; re-export the artifact with gradcam_model");
  }

  const Value& get(const std::string& key) const {
    const Value* value = record_.find(key);
    if (value == nullptr) fail("lacks '" + key + "'");
    return *value;
  }

  const Value& typed(const std::string& key, Value::Type type, bool nullable = false) const {
    const Value& value = get(key);
    if (value.type != type && !(nullable && value.is_null())) {
      fail("has '" + key + "' as " + json::type_name(value.type) + ", expected " + json::type_name(type));
    }
    return value;
  }

  int64_t integer(const std::string& key, int64_t min_value) const {
    const Value& value = typed(key, Value::Type::Number);
    if (!value.is_integer) fail("has a non-integer '" + key + "'");
    if (value.integer < min_value) fail("has '" + key + "' = " + std::to_string(value.integer) + ", expected >= " + std::to_string(min_value));
    return value.integer;
  }

  std::string string(const std::string& key) const { return typed(key, Value::Type::String).string; }

  bool boolean(const std::string& key) const { return typed(key, Value::Type::Bool).boolean; }

  std::vector<double> numbers(const std::string& key) const {
    std::vector<double> out;
    for (const Value& item : typed(key, Value::Type::Array).items) {
      if (item.type != Value::Type::Number) fail("has a non-number in '" + key + "'");
      out.push_back(item.number);
    }
    return out;
  }

 private:
  const Value& record_;
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
  Value record;
  try {
    record = json::parse(text);
  } catch (const json::ParseError& e) {
    throw MetadataError(source + ": the gradcam metadata is not valid JSON (" + e.what() + ")");
  }
  if (record.type != Value::Type::Object) {
    throw MetadataError(source + ": the gradcam metadata is not a JSON object; re-export the artifact with gradcam_model");
  }
  const Fields f(record, source);

  Metadata meta;
  meta.schema_version = f.integer("schema_version", 1);
  if (meta.schema_version > kSchemaVersion) {
    throw MetadataError(source + ": metadata schema version " + std::to_string(meta.schema_version) +
                        " is newer than this program understands (up to " + std::to_string(kSchemaVersion) +
                        "); rebuild gradcam_run from a newer gradcam_model");
  }
  meta.method = f.string("method");
  meta.target_layer = f.string("target_layer");
  meta.architecture = f.string("architecture");
  meta.format = f.string("format");
  meta.num_classes = f.integer("num_classes", 1);
  meta.in_channels = f.integer("in_channels", 1);
  meta.top_k = f.integer("top_k", 1);
  meta.class_input = f.boolean("class_input");
  meta.mean = f.numbers("mean");
  meta.std = f.numbers("std");

  const Value& size = f.typed("input_size", Value::Type::Array, /*nullable=*/true);
  if (!size.is_null()) {
    if (size.items.size() != 2 || !size.items[0].is_integer || !size.items[1].is_integer ||
        size.items[0].integer < 1 || size.items[1].integer < 1) {
      f.fail("has an 'input_size' that is not [height, width]");
    }
    meta.input_size = std::make_pair(size.items[0].integer, size.items[1].integer);
  }
  const Value& names = f.typed("class_names", Value::Type::Array, /*nullable=*/true);
  for (const Value& name : names.items) {
    if (name.type != Value::Type::String) f.fail("has a class name that is not a string");
    meta.class_names.push_back(name.string);
  }
  if (!meta.class_names.empty() && static_cast<int64_t>(meta.class_names.size()) != meta.num_classes) {
    f.fail("has " + std::to_string(meta.class_names.size()) + " class names for " + std::to_string(meta.num_classes) + " classes");
  }
  if (meta.class_input && meta.top_k != 1) f.fail("combines a class input with top_k > 1");
  return meta;
}

}  // namespace gradcam
