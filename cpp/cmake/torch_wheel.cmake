# gradcam_torch: an interface target for the libtorch inside the installed torch wheel.
#
# Why not find_package(Torch): the wheel is a CUDA build, and its TorchConfig.cmake insists
# on finding a CUDA toolkit (nvcc, enable_language(CUDA)) even for a CPU-only program. We
# only need the wheel's headers and shared libraries, so we locate the wheel through the
# same CMAKE_PREFIX_PATH and link libtorch_cpu + libc10 directly. The CUDA runtime
# libraries that libtorch_cpu itself needs come from the pip nvidia-* packages next to the
# wheel and are found through the wheel's own RPATH, so no CUDA toolkit is involved.
set(TORCH_ROOT "" CACHE PATH "the torch package folder (found from CMAKE_PREFIX_PATH when empty)")

if(NOT TORCH_ROOT)
  set(_hints ${CMAKE_PREFIX_PATH})
  if(DEFINED ENV{CMAKE_PREFIX_PATH})
    string(REPLACE ":" ";" _env_hints "$ENV{CMAKE_PREFIX_PATH}")
    list(APPEND _hints ${_env_hints})
  endif()
  find_file(GRADCAM_TORCH_CONFIG TorchConfig.cmake
    HINTS ${_hints}
    PATH_SUFFIXES Torch share/cmake/Torch
    NO_DEFAULT_PATH)
  if(NOT GRADCAM_TORCH_CONFIG)
    message(FATAL_ERROR
      "torch not found. Pass the wheel's CMake folder:\n"
      "  cmake -S cpp -B cpp/build -DCMAKE_PREFIX_PATH=\"$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')\"\n"
      "or the torch package folder as -DTORCH_ROOT=..., or -DGRADCAM_BUILD_TORCH=OFF")
  endif()
  # <torch>/share/cmake/Torch/TorchConfig.cmake -> <torch>
  get_filename_component(_config_dir "${GRADCAM_TORCH_CONFIG}" DIRECTORY)
  get_filename_component(TORCH_ROOT "${_config_dir}/../../.." ABSOLUTE)
endif()

if(NOT EXISTS "${TORCH_ROOT}/include/torch/script.h")
  message(FATAL_ERROR "${TORCH_ROOT} has no include/torch/script.h: not a torch package with C++ headers")
endif()

set(_torch_libs torch_cpu c10)
if(GRADCAM_WITH_CUDA)
  list(PREPEND _torch_libs torch_cuda c10_cuda)
endif()
set(_torch_paths "")
foreach(_lib IN LISTS _torch_libs)
  find_library(GRADCAM_LIB_${_lib} ${_lib} PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH)
  if(NOT GRADCAM_LIB_${_lib})
    message(FATAL_ERROR "lib${_lib}.so not found in ${TORCH_ROOT}/lib")
  endif()
  list(APPEND _torch_paths "${GRADCAM_LIB_${_lib}}")
endforeach()
message(STATUS "gradcam_run: torch at ${TORCH_ROOT} (CUDA ${GRADCAM_WITH_CUDA})")

add_library(gradcam_torch INTERFACE)
target_include_directories(gradcam_torch SYSTEM INTERFACE
  "${TORCH_ROOT}/include"
  "${TORCH_ROOT}/include/torch/csrc/api/include")
# the definitions the wheel's own CMake config gives torch_cpu's users
target_compile_definitions(gradcam_torch INTERFACE USE_DISTRIBUTED USE_C10D_GLOO USE_RPC USE_TENSORPIPE)
# --no-as-needed: the operators and (with CUDA) the device hooks register themselves in
# static initializers, so the libraries must stay linked although no symbol is used directly.
target_link_libraries(gradcam_torch INTERFACE -Wl,--no-as-needed ${_torch_paths} -Wl,--as-needed)
set(GRADCAM_TORCH_RPATH "${TORCH_ROOT}/lib")
