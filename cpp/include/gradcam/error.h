// The library's one exception type: a one-line message and a code that is also the exit code
// of the programs built on it (gradcam_ort, gradcam_run).
#pragma once

#include <stdexcept>
#include <string>

namespace gradcam {

// One code per failure stage; the programs exit with it.
enum ExitCode : int {
  kOk = 0,
  kInternal = 1,       // a bug or an unexpected exception
  kUsage = 2,          // bad command line or argument: a class not of the artifact or out of range, a bad option value
  kMissingFile = 3,    // the artifact or an image does not exist or is not readable
  kBadArtifact = 4,    // not loadable (e.g. truncated), no / malformed / too new metadata, a preprocessing it cannot apply,
                       // off-contract inputs or outputs
  kBadImage = 5,       // a picture that cannot be decoded or preprocessed, a buffer of the wrong size or channel count
  kRunFailed = 6,      // CUDA unavailable, or the engine failed while running a batch
  kWriteFailed = 7,    // the output folder or a file in it cannot be written
};

class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  // The ExitCode of this failure.
  int code() const noexcept { return code_; }

 private:
  int code_;
};

}  // namespace gradcam
