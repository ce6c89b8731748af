// gradcam_run: run a gradcam_model TorchScript artifact from C++ (libtorch).
//
//   gradcam_run ARTIFACT.pt INPUT.npy OUTDIR [--class-index FILE.npy] [--device DEV] [--threads N] [--quiet]
//
// Loads the artifact with its gradcam.json metadata, checks the input batch against
// the metadata, runs forward(image[, target_class]) under c10::InferenceMode and writes
// logits.npy, probabilities.npy, class_index.npy (int64), score.npy and cam.npy to OUTDIR.
// Errors print one line on stderr and exit with a code that names the failure stage.
#include <torch/cuda.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "metadata.h"
#include "npy.h"

namespace fs = std::filesystem;

namespace {

// Exit codes, one per failure stage.
enum ExitCode : int {
  kOk = 0,
  kInternal = 1,       // a bug or an unexpected exception
  kUsage = 2,          // bad command line
  kMissingFile = 3,    // artifact, input or class file does not exist / is not readable
  kBadArtifact = 4,    // not TorchScript, no gradcam.json, bad or too new metadata, unexpected signature
  kBadInput = 5,       // .npy malformed, wrong dtype or shape, non-finite pixels, class out of range
  kRunFailed = 6,      // device unavailable, forward raised, outputs off contract
  kWriteFailed = 7,    // cannot create OUTDIR or write an output
};

constexpr const char* kProgram = "gradcam_run";
constexpr const char* kOutputNames[] = {"logits", "probabilities", "class_index", "score", "cam"};

constexpr const char* kUsageText =
    "usage: gradcam_run ARTIFACT.pt INPUT.npy OUTDIR [--class-index FILE.npy] [--device DEV] [--threads N] [--quiet]\n"
    "\n"
    "Runs a gradcam_model TorchScript artifact on a float32 [N, C, H, W] (or [C, H, W]) batch of\n"
    "normalized images and writes logits.npy, probabilities.npy, class_index.npy, score.npy and\n"
    "cam.npy to OUTDIR (created if missing).\n"
    "\n"
    "  --class-index FILE.npy  int [N] (or one int) classes to explain, -1 = top class;\n"
    "                          only for artifacts exported with a class input\n"
    "  --device DEV            cpu (default), cuda or cuda:I (needs a -DGRADCAM_WITH_CUDA=ON build)\n"
    "  --threads N             intra-op CPU threads (default: libtorch's choice)\n"
    "  --quiet                 print nothing but errors\n"
    "\n"
    "exit codes: 0 ok, 2 usage, 3 missing file, 4 bad artifact, 5 bad input, 6 run failed, 7 write failed\n";

// An expected failure: one line for stderr and the exit code.
struct Failure {
  int code;
  std::string message;
};

struct Options {
  std::string artifact;
  std::string input;
  std::string outdir;
  std::optional<std::string> class_index;
  std::string device = "cpu";
  int threads = 0;
  bool quiet = false;
  bool help = false;
};

// Errors must stay on one line: keep the first line of multi-line library messages.
std::string first_line(const std::string& text) {
  const std::size_t end = text.find('\n');
  std::string line = text.substr(0, end);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

Options parse_args(int argc, char** argv) {
  Options opt;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      inline_value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw Failure{kUsage, arg + " needs a value (see --help)"};
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      opt.help = true;
    } else if (arg == "--class-index") {
      opt.class_index = value();
    } else if (arg == "--device") {
      opt.device = value();
    } else if (arg == "--threads") {
      const std::string text = value();
      char* end = nullptr;
      const long n = std::strtol(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || n < 1 || n > 1024) {
        throw Failure{kUsage, "--threads must be a positive integer, got '" + text + "'"};
      }
      opt.threads = static_cast<int>(n);
    } else if (arg == "--quiet" || arg == "-q") {
      if (inline_value) throw Failure{kUsage, "--quiet takes no value"};
      opt.quiet = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw Failure{kUsage, "unknown option '" + arg + "' (see --help)"};
    } else {
      positional.push_back(arg);
    }
  }
  if (opt.help) return opt;
  if (positional.size() != 3) {
    throw Failure{kUsage, "expected ARTIFACT INPUT.npy OUTDIR, got " + std::to_string(positional.size()) +
                              " positional argument(s) (see --help)"};
  }
  opt.artifact = positional[0];
  opt.input = positional[1];
  opt.outdir = positional[2];
  return opt;
}

void require_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw Failure{kMissingFile, what + " " + path + " does not exist"};
  if (!fs::is_regular_file(status)) throw Failure{kMissingFile, what + " " + path + " is not a file"};
  std::FILE* probe = std::fopen(path.c_str(), "rb");
  if (probe == nullptr) throw Failure{kMissingFile, what + " " + path + " is not readable"};
  std::fclose(probe);
}

c10::Device parse_device(const std::string& text) {
  std::optional<c10::Device> device;
  try {
    device = c10::Device(text);
  } catch (const c10::Error&) {
    throw Failure{kUsage, "--device must be cpu, cuda or cuda:I, got '" + text + "'"};
  }
  if (!device->is_cpu() && !device->is_cuda()) {
    throw Failure{kUsage, "--device must be cpu, cuda or cuda:I, got '" + text + "'"};
  }
  if (device->is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw Failure{kRunFailed, "CUDA is not available: this gradcam_run was built without -DGRADCAM_WITH_CUDA=ON "
                                "or the machine has no usable GPU; use --device cpu"};
    }
    if (device->has_index() && device->index() >= static_cast<int>(torch::cuda::device_count())) {
      throw Failure{kRunFailed, "--device " + text + ": there are only " + std::to_string(torch::cuda::device_count()) +
                                    " CUDA device(s)"};
    }
  }
  return *device;
}

std::string dtype_name(const gradcam::NpyArray& a) {
  const std::string bits = std::to_string(a.item_size * 8);
  switch (a.kind) {
    case 'f': return "float" + bits;
    case 'i': return "int" + bits;
    case 'u': return "uint" + bits;
    case 'b': return "bool";
    default: return a.descr;
  }
}

std::optional<c10::ScalarType> scalar_type(const gradcam::NpyArray& a) {
  const std::size_t n = a.item_size;
  switch (a.kind) {
    case 'f':
      if (n == 2) return c10::kHalf;
      if (n == 4) return c10::kFloat;
      if (n == 8) return c10::kDouble;
      break;
    case 'i':
      if (n == 1) return c10::kChar;
      if (n == 2) return c10::kShort;
      if (n == 4) return c10::kInt;
      if (n == 8) return c10::kLong;
      break;
    case 'u':
      if (n == 1) return c10::kByte;
      if (n == 2) return c10::kUInt16;
      if (n == 4) return c10::kUInt32;
      if (n == 8) return c10::kUInt64;
      break;
    case 'b':
      if (n == 1) return c10::kBool;
      break;
  }
  return std::nullopt;
}

gradcam::NpyArray read_array(const std::string& path) {
  try {
    return gradcam::read_npy(path);
  } catch (const gradcam::NpyError& e) {
    throw Failure{kBadInput, e.what()};
  }
}

// The .npy data as a CPU tensor of the file's dtype, C order.
torch::Tensor to_tensor(const gradcam::NpyArray& a, const std::string& path) {
  const std::optional<c10::ScalarType> type = scalar_type(a);
  if (!type) throw Failure{kBadInput, path + " has dtype " + a.descr + ", which gradcam_run does not read"};
  if (a.big_endian) throw Failure{kBadInput, path + " is big-endian (" + a.descr + "); save it little-endian"};
  std::vector<int64_t> shape = a.shape;
  if (a.fortran_order) std::reverse(shape.begin(), shape.end());
  const auto options = torch::TensorOptions().dtype(*type);
  torch::Tensor t = a.numel() == 0 ? torch::empty(shape, options)
                                   : torch::from_blob(const_cast<char*>(a.data.data()), shape, options).clone();
  if (a.fortran_order && t.dim() > 1) {
    std::vector<int64_t> reversed(static_cast<std::size_t>(t.dim()));
    for (int64_t d = 0; d < t.dim(); ++d) reversed[static_cast<std::size_t>(d)] = t.dim() - 1 - d;
    t = t.permute(reversed).contiguous();
  }
  return t;
}

std::string join(const std::vector<double>& values) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << ']';
  return out.str();
}

// The image batch as float32 [N, C, H, W], with the same checks as the Python runtime.
torch::Tensor load_images(const std::string& path, const gradcam::Metadata& meta) {
  const gradcam::NpyArray array = read_array(path);
  const std::string c = std::to_string(meta.in_channels);
  if (array.kind != 'f') {
    throw Failure{kBadInput, path + ": images must be float16/32/64 (pixels normalized with mean " + join(meta.mean) +
                                 " and std " + join(meta.std) + "), got " + dtype_name(array)};
  }
  torch::Tensor images = to_tensor(array, path);
  if (images.dim() == 3) images = images.unsqueeze(0);
  if (images.dim() != 4) {
    throw Failure{kBadInput, path + ": images must be [N, " + c + ", H, W] or one [" + c + ", H, W] image, got shape " +
                                 array.shape_string()};
  }
  const std::vector<int64_t> shape = images.sizes().vec();
  if (shape[0] == 0) throw Failure{kBadInput, path + ": images is an empty batch"};
  if (shape[1] != meta.in_channels) {
    throw Failure{kBadInput, path + ": images must have " + c + " channels (axis 1), got shape " + gradcam::shape_string(shape)};
  }
  if (meta.input_size && (shape[2] != meta.input_size->first || shape[3] != meta.input_size->second)) {
    throw Failure{kBadInput, path + ": this artifact takes " + std::to_string(meta.input_size->first) + "x" +
                                 std::to_string(meta.input_size->second) + " images (fixed spatial size), got " +
                                 std::to_string(shape[2]) + "x" + std::to_string(shape[3]) + "; resize first"};
  }
  if (shape[2] < 1 || shape[3] < 1) throw Failure{kBadInput, path + ": images have an empty spatial size"};
  images = images.to(torch::kFloat).contiguous();
  const torch::Tensor finite = torch::isfinite(images).reshape({shape[0], -1}).all(1);
  if (!finite.all().item<bool>()) {
    std::string bad;
    const torch::Tensor idx = torch::nonzero(finite.logical_not()).flatten();
    for (int64_t i = 0; i < idx.numel(); ++i) bad += (i ? ", " : "") + std::to_string(idx[i].item<int64_t>());
    throw Failure{kBadInput, path + ": images contain NaN or Inf in sample(s) [" + bad + "]; expected finite pixels"};
  }
  return images;
}

// The classes to explain as int64 [N]; -1 for every sample when no file is given.
torch::Tensor load_classes(const std::optional<std::string>& path, const gradcam::Metadata& meta, int64_t batch) {
  if (!path) return torch::full({batch}, -1, torch::kLong);
  const gradcam::NpyArray array = read_array(*path);
  if (array.kind != 'i' && array.kind != 'u') {
    throw Failure{kBadInput, *path + ": class_index must hold integers, got " + dtype_name(array)};
  }
  torch::Tensor classes = to_tensor(array, *path).to(torch::kLong);
  if (classes.dim() == 0) classes = classes.expand({batch}).contiguous();
  if (classes.dim() != 1 || classes.size(0) != batch) {
    throw Failure{kBadInput, *path + ": class_index must be one int or [" + std::to_string(batch) +
                                 "] ints (one per image), got shape " + array.shape_string()};
  }
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t c = classes[i].item<int64_t>();
    if (c < -1 || c >= meta.num_classes) {
      throw Failure{kBadInput, *path + ": class_index[" + std::to_string(i) + "] = " + std::to_string(c) +
                                   " is out of range; expected 0.." + std::to_string(meta.num_classes - 1) +
                                   ", or -1 for the top prediction"};
    }
  }
  return classes;
}

struct Artifact {
  torch::jit::Module module;
  gradcam::Metadata meta;
};

Artifact load_artifact(const std::string& path, const c10::Device& device) {
  torch::jit::ExtraFilesMap extra{{gradcam::kMetadataKey, ""}};
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device, extra);
  } catch (const c10::Error& e) {
    throw Failure{kBadArtifact, path + " is not a loadable TorchScript file: " + first_line(e.what_without_backtrace())};
  } catch (const std::exception& e) {
    throw Failure{kBadArtifact, path + " is not a loadable TorchScript file: " + first_line(e.what())};
  }
  const std::string& text = extra[gradcam::kMetadataKey];
  if (text.empty()) {
    throw Failure{kBadArtifact, path + " is a TorchScript file without gradcam_model metadata (gradcam.json); "
                                       "export it with gradcam_model.export_torchscript"};
  }
  gradcam::Metadata meta;
  try {
    meta = gradcam::parse_metadata(text, path);
  } catch (const gradcam::MetadataError& e) {
    throw Failure{kBadArtifact, e.what()};
  }
  const auto forward = module.find_method("forward");
  if (!forward) throw Failure{kBadArtifact, path + " has no forward method"};
  const std::size_t expected = meta.class_input ? 3 : 2;  // self, image[, target_class]
  const std::size_t got = forward->function().getSchema().arguments().size();
  if (got != expected) {
    throw Failure{kBadArtifact, path + ": forward takes " + std::to_string(got - 1) + " input(s), but its metadata says " +
                                    std::to_string(expected - 1) + "; re-export the artifact"};
  }
  module.eval();
  return {std::move(module), std::move(meta)};
}

// Checks the five outputs against the contract and brings them to the CPU.
std::vector<torch::Tensor> collect_outputs(const c10::IValue& result, int64_t batch) {
  if (!result.isTuple() || result.toTupleRef().elements().size() != 5) {
    throw Failure{kRunFailed, "the artifact's forward did not return the 5 outputs (logits, probabilities, "
                              "class_index, score, cam)"};
  }
  std::vector<torch::Tensor> outputs;
  const auto& elements = result.toTupleRef().elements();
  for (std::size_t i = 0; i < elements.size(); ++i) {
    const std::string name = kOutputNames[i];
    if (!elements[i].isTensor()) throw Failure{kRunFailed, "output " + name + " is not a tensor"};
    torch::Tensor t = elements[i].toTensor().to(torch::kCPU).contiguous();
    const auto expected_type = name == "class_index" ? torch::kLong : torch::kFloat;
    const int64_t expected_rank = name == "cam" ? 4 : 2;
    if (t.scalar_type() != expected_type || t.dim() != expected_rank || t.size(0) != batch) {
      throw Failure{kRunFailed, "output " + name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                                    " and shape " + gradcam::shape_string(t.sizes().vec()) + ", off the artifact contract"};
    }
    outputs.push_back(std::move(t));
  }
  return outputs;
}

void write_outputs(const std::string& outdir, const std::vector<torch::Tensor>& outputs) {
  std::error_code ec;
  fs::create_directories(outdir, ec);
  if (ec || !fs::is_directory(outdir)) {
    throw Failure{kWriteFailed, "cannot create output folder " + outdir + (ec ? ": " + ec.message() : ": not a folder")};
  }
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const torch::Tensor& t = outputs[i];
    const std::string descr = t.scalar_type() == torch::kLong ? "<i8" : "<f4";
    const std::string path = (fs::path(outdir) / (std::string(kOutputNames[i]) + ".npy")).string();
    try {
      gradcam::write_npy(path, descr, t.sizes().vec(), t.data_ptr(), t.nbytes());
    } catch (const gradcam::NpyError& e) {
      throw Failure{kWriteFailed, e.what()};
    }
  }
}

void print_results(const gradcam::Metadata& meta, const std::vector<torch::Tensor>& outputs) {
  const torch::Tensor& classes = outputs[2];
  const torch::Tensor& scores = outputs[3];
  const auto c = classes.accessor<int64_t, 2>();
  const auto s = scores.accessor<float, 2>();
  for (int64_t n = 0; n < classes.size(0); ++n) {
    std::printf("sample %lld:", static_cast<long long>(n));
    for (int64_t k = 0; k < classes.size(1); ++k) {
      const std::string label = meta.label(c[n][k]);
      std::printf("%s class %lld", k ? "," : "", static_cast<long long>(c[n][k]));
      if (label != std::to_string(c[n][k])) std::printf(" (%s)", label.c_str());
      std::printf(" score %.4f", s[n][k]);
    }
    std::printf("\n");
  }
}

int run(const Options& opt) {
  require_file(opt.artifact, "artifact");
  require_file(opt.input, "input");
  if (opt.class_index) require_file(*opt.class_index, "class index file");
  if (opt.threads > 0) at::set_num_threads(opt.threads);
  const c10::Device device = parse_device(opt.device);

  const auto t0 = std::chrono::steady_clock::now();
  Artifact artifact = load_artifact(opt.artifact, device);
  const gradcam::Metadata& meta = artifact.meta;
  if (!opt.quiet) std::printf("metadata: %s\n", meta.summary().c_str());
  if (opt.class_index && !meta.class_input) {
    throw Failure{kBadInput, "this artifact explains its top-" + std::to_string(meta.top_k) +
                                 " classes and takes no class; export it with class_input=True to choose classes"};
  }

  const torch::Tensor images = load_images(opt.input, meta);
  const int64_t batch = images.size(0);
  std::vector<c10::IValue> inputs{images.to(device)};
  if (meta.class_input) inputs.emplace_back(load_classes(opt.class_index, meta, batch).to(device));

  const auto t1 = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> outputs;
  {
    c10::InferenceMode guard;  // no autograd bookkeeping: the gradient is already in the graph
    c10::IValue result;
    try {
      result = artifact.module.forward(inputs);
    } catch (const c10::Error& e) {
      throw Failure{kRunFailed, "the artifact's forward failed: " + first_line(e.what_without_backtrace())};
    } catch (const std::exception& e) {
      throw Failure{kRunFailed, "the artifact's forward failed: " + first_line(e.what())};
    }
    outputs = collect_outputs(result, batch);
  }
  const auto t2 = std::chrono::steady_clock::now();
  write_outputs(opt.outdir, outputs);

  if (!opt.quiet) {
    using ms = std::chrono::duration<double, std::milli>;
    print_results(meta, outputs);
    std::printf("ran batch %lld on %s: load %.1f ms, forward %.1f ms; wrote %s/{logits,probabilities,class_index,score,cam}.npy\n",
                static_cast<long long>(batch), device.str().c_str(), ms(t1 - t0).count(), ms(t2 - t1).count(),
                opt.outdir.c_str());
  }
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse_args(argc, argv);
    if (opt.help) {
      std::fputs(kUsageText, stdout);
      return kOk;
    }
    return run(opt);
  } catch (const Failure& f) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", kProgram, first_line(f.message).c_str());
    return f.code;
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: internal error: %s\n", kProgram, first_line(e.what_without_backtrace()).c_str());
    return kInternal;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: internal error: %s\n", kProgram, first_line(e.what()).c_str());
    return kInternal;
  }
}
