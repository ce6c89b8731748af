// A small JSON reader, enough for the artifact metadata (gradcam.json).
//
// Full JSON syntax (RFC 8259) into a tree of Values; numbers are kept as double
// and, when written without fraction or exponent, also as int64. No torch dependency.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradcam::json {

class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  bool is_integer = false;  // a number written as an integer that fits int64
  int64_t integer = 0;
  std::string string;
  std::vector<Value> items;       // array elements, or object values
  std::vector<std::string> keys;  // object keys, parallel to items

  bool is_null() const { return type == Type::Null; }
  // The member `key` of an object, or nullptr when absent (or not an object).
  const Value* find(const std::string& key) const;
};

// Parses one JSON document; throws ParseError saying where it went wrong.
Value parse(const std::string& text);

const char* type_name(Value::Type type);

}  // namespace gradcam::json
