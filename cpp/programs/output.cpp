// The staging folder and its commit (see output.h).
#include "output.h"

#include <unistd.h>

#include <fstream>

#include "gradcam/error.h"

namespace fs = std::filesystem;

namespace gradcam {

OutputFolder::OutputFolder(const fs::path& root) : root_(root) {
  std::error_code ec;
  created_ = fs::create_directories(root_, ec);
  if (ec || !fs::is_directory(root_)) {
    throw Error(kWriteFailed, "cannot create output folder " + root_.string() + (ec ? ": " + ec.message() : ": not a folder"));
  }
  staging_ = root_ / (".staging-" + std::to_string(::getpid()));
  fs::create_directory(staging_, ec);
  if (ec) {
    cleanup();
    throw Error(kWriteFailed, "cannot write to output folder " + root_.string() + ": " + ec.message());
  }
}

OutputFolder::~OutputFolder() {
  if (!committed_) cleanup();
}

void OutputFolder::write(const std::string& relative, const void* data, std::size_t size) {
  const fs::path path = staging_ / relative;
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::ofstream file(path, std::ios::binary);
  file.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  file.close();
  if (ec || !file) throw Error(kWriteFailed, "cannot write " + (root_ / relative).string());
  files_.push_back(relative);
}

void OutputFolder::commit() {
  for (const std::string& relative : files_) {
    const fs::path target = root_ / relative;
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    fs::rename(staging_ / relative, target, ec);
    if (ec) throw Error(kWriteFailed, "cannot write " + target.string() + ": " + ec.message());
  }
  committed_ = true;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void OutputFolder::cleanup() noexcept {
  std::error_code ec;
  fs::remove_all(staging_, ec);
  if (created_) fs::remove_all(root_, ec);
}

}  // namespace gradcam
