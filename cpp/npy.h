// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Only what the Grad-CAM runner needs: numeric dtypes, any rank, C or Fortran
// order on read; little-endian C-order arrays on write. No torch dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradcam {

// A malformed or unreadable .npy file; the message names the file.
class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct NpyArray {
  std::string descr;            // NumPy's dtype string, e.g. "<f4", "<i8", "|u1"
  char kind = '?';              // 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool, ...
  std::size_t item_size = 0;    // bytes per element
  bool big_endian = false;      // true for ">" multi-byte dtypes
  bool fortran_order = false;   // column-major data
  std::vector<int64_t> shape;   // () for a scalar
  std::vector<char> data;       // raw element bytes, as stored in the file

  int64_t numel() const;
  std::string shape_string() const;  // Python tuple style: "(4, 3, 64, 64)", "(4,)", "()"
};

// Reads a whole .npy file; throws NpyError (bad header, truncated data, ...).
NpyArray read_npy(const std::string& path);

// Writes a C-order array atomically (temp file + rename); throws NpyError on I/O failure.
// `descr` is a little-endian NumPy dtype string such as "<f4" or "<i8".
void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data, std::size_t bytes);

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace gradcam
