// .npy reader/writer. Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#include "npy.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace gradcam {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
constexpr std::size_t kAlign = 64;  // NumPy >= 1.19 aligns the data to 64 bytes

// A cursor over the header, a Python dict literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (4, 3, 64, 64), }
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  void parse(NpyArray& out) {
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      expect(':');
      skip_space();
      if (key == "descr") {
        out.descr = quoted();
        have_descr = true;
      } else if (key == "fortran_order") {
        out.fortran_order = boolean();
        have_order = true;
      } else if (key == "shape") {
        out.shape = tuple();
        have_shape = true;
      } else {
        fail("unexpected header key '" + key + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') fail("expected ',' or '}' in the header");
    }
    if (!have_descr || !have_order || !have_shape) fail("the header lacks descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw NpyError(path_ + " is not a valid .npy file: " + why);
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "' in the header");
    ++pos_;
  }
  std::string quoted() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string in the header");
    const std::size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string in the header");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return value;
  }
  bool boolean() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("fortran_order must be True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') {
        ++pos_;
        return dims;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("shape must be a tuple of non-negative ints");
      int64_t dim = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = peek() - '0';
        if (dim > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("a shape dimension overflows int64");
        dim = dim * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;  // Python 2 longs, in files written long ago
      dims.push_back(dim);
      skip_space();
      if (peek() == ',') ++pos_;
      else if (peek() != ')') fail("expected ',' or ')' in the shape");
    }
  }

  const std::string& text_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

// Fills kind, item_size and big_endian from descr ("<f4", "|u1", ">i8", "<c8", ...).
void parse_descr(NpyArray& array, const std::string& path) {
  const std::string& d = array.descr;
  if (d.size() < 3 || std::string("<>|=").find(d[0]) == std::string::npos || !std::isalpha(static_cast<unsigned char>(d[1]))) {
    throw NpyError(path + " has dtype '" + d + "', which is not a plain numeric dtype");
  }
  std::size_t size = 0;
  for (std::size_t i = 2; i < d.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(d[i])) || size > 1024) {
      throw NpyError(path + " has dtype '" + d + "', which is not a plain numeric dtype");
    }
    size = size * 10 + static_cast<std::size_t>(d[i] - '0');
  }
  if (size == 0) throw NpyError(path + " has dtype '" + d + "' with no item size");
  array.kind = d[1];
  array.item_size = size;
  array.big_endian = d[0] == '>' && size > 1;
}

uint32_t read_le(const unsigned char* bytes, std::size_t count) {
  uint32_t value = 0;
  for (std::size_t i = 0; i < count; ++i) value |= static_cast<uint32_t>(bytes[i]) << (8 * i);
  return value;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '(';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out << ", ";
    out << shape[i];
  }
  if (shape.size() == 1) out << ',';
  out << ')';
  return out.str();
}

std::string NpyArray::shape_string() const { return gradcam::shape_string(shape); }

NpyArray read_npy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw NpyError("cannot open " + path + ": " + std::strerror(errno));
  unsigned char preamble[kMagicSize + 2];
  if (!file.read(reinterpret_cast<char*>(preamble), sizeof preamble) ||
      std::memcmp(preamble, kMagic, kMagicSize) != 0) {
    throw NpyError(path + " is not a .npy file (no NUMPY magic); save it with numpy.save");
  }
  const int major = preamble[kMagicSize];
  if (major < 1 || major > 3) throw NpyError(path + " uses .npy format version " + std::to_string(major) + ", expected 1, 2 or 3");
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  unsigned char len_buf[4];
  if (!file.read(reinterpret_cast<char*>(len_buf), static_cast<std::streamsize>(len_bytes))) {
    throw NpyError(path + " is not a valid .npy file: truncated header");
  }
  std::string header(read_le(len_buf, len_bytes), '\0');
  if (!file.read(header.data(), static_cast<std::streamsize>(header.size()))) {
    throw NpyError(path + " is not a valid .npy file: truncated header");
  }

  NpyArray array;
  HeaderParser(header, path).parse(array);
  parse_descr(array, path);

  // Element count and byte size, refusing anything that overflows.
  const auto max_bytes = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t count = 1;
  for (int64_t d : array.shape) {
    if (d != 0 && count > max_bytes / static_cast<uint64_t>(d)) throw NpyError(path + " has an absurd shape " + array.shape_string());
    count *= static_cast<uint64_t>(d);
  }
  if (count != 0 && count > max_bytes / array.item_size) throw NpyError(path + " has an absurd shape " + array.shape_string());
  const uint64_t expected = count * array.item_size;

  const std::streampos data_start = file.tellg();
  file.seekg(0, std::ios::end);
  const uint64_t available = static_cast<uint64_t>(file.tellg() - data_start);
  if (available != expected) {
    throw NpyError(path + " holds " + std::to_string(available) + " data bytes, but shape " + array.shape_string() +
                   " of " + array.descr + " needs " + std::to_string(expected));
  }
  file.seekg(data_start);
  array.data.resize(static_cast<std::size_t>(expected));
  if (expected && !file.read(array.data.data(), static_cast<std::streamsize>(expected))) {
    throw NpyError("cannot read " + path);
  }
  return array;
}

void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data, std::size_t bytes) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_string(shape) + ", }";
  // Pad with spaces and end with a newline so that the data starts on a 64-byte boundary.
  const std::size_t prefix = kMagicSize + 2 + 2;
  const std::size_t total = ((prefix + header.size() + 1 + kAlign - 1) / kAlign) * kAlign;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');
  if (header.size() > 0xFFFF) throw NpyError("cannot write " + path + ": header too long for .npy version 1.0");

  const std::string tmp = path + ".tmp";
  {
    std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
    if (!file) throw NpyError("cannot write " + tmp + ": " + std::strerror(errno));
    const unsigned char version_and_len[4] = {1, 0, static_cast<unsigned char>(header.size() & 0xFF),
                                              static_cast<unsigned char>(header.size() >> 8)};
    file.write(kMagic, kMagicSize);
    file.write(reinterpret_cast<const char*>(version_and_len), sizeof version_and_len);
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    file.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    file.flush();
    if (!file) {
      std::remove(tmp.c_str());
      throw NpyError("cannot write " + tmp + " (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw NpyError("cannot move " + tmp + " to " + path + ": " + why);
  }
}

}  // namespace gradcam
