// The output folder of a run, written through a staging folder, and a small .npy writer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

namespace gradcam {

// The output folder, written through a staging folder inside it: files appear in DIR only
// when the whole run succeeded (each by an atomic rename), and the destructor removes the
// staging folder, and DIR itself if this run created it, on any failure.
class OutputFolder {
 public:
  // Creates DIR if needed and the staging folder; throws Error(kWriteFailed, ...).
  explicit OutputFolder(const std::filesystem::path& root);
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;
  ~OutputFolder();

  // Writes `relative` into the staging folder; it moves into place on commit().
  void write(const std::string& relative, const void* data, std::size_t size);
  // Moves every written file into DIR.
  void commit();

 private:
  void cleanup() noexcept;

  std::filesystem::path root_, staging_;
  bool created_ = false, committed_ = false;
  std::vector<std::string> files_;
};

// A little-endian .npy file (format 1.0) holding a C-order array.
template <typename T>
std::string npy(const std::vector<T>& data, const std::vector<int64_t>& shape) {
  std::string dims;
  for (const int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (4,) but (4, 3)
  std::string header = std::string("{'descr': '") + (std::is_same_v<T, float> ? "<f4" : "<i8") +
                       "', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // pad so that the data starts 64-byte aligned
  header += '\n';
  std::string out = "\x93NUMPY\x01";
  out += '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T));
  return out;
}

}  // namespace gradcam
