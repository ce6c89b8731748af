# onnxruntime::onnxruntime, from one of:
#  1. an installed ONNX Runtime with its CMake config: Debian 13's libonnxruntime-dev
#     (apt-get install libonnxruntime-dev), the official release archives (-DCMAKE_PREFIX_PATH=<it>);
#  2. the library inside the onnxruntime / onnxruntime-gpu Python wheel, which ships
#     capi/libonnxruntime.so.1.<minor>.<patch> but no headers and no libonnxruntime.so.1 link:
#     -DONNXRUNTIME_LIBRARY_DIR=<wheel>/capi -DONNXRUNTIME_INCLUDE_DIR=<folder with onnxruntime_cxx_api.h>.
#     Headers come from Debian 13's libonnxruntime-dev unpacked by scripts/setup.sh into
#     build/cpp-deps/onnxruntime-dev (found by default). Headers older than the library
#     are fine (the C API keeps every older version); newer ones are refused below.
set(ONNXRUNTIME_LIBRARY_DIR "" CACHE PATH "a folder with libonnxruntime.so.1.*, e.g. the onnxruntime wheel's capi folder")
set(ONNXRUNTIME_INCLUDE_DIR "" CACHE PATH "the folder with onnxruntime_cxx_api.h (with ONNXRUNTIME_LIBRARY_DIR)")

if(NOT ONNXRUNTIME_LIBRARY_DIR)
  find_package(onnxruntime CONFIG QUIET)
  if(NOT TARGET onnxruntime::onnxruntime)
    message(FATAL_ERROR
      "ONNX Runtime not found. Either install it with its CMake config (Debian 13: apt-get install "
      "libonnxruntime-dev) or use the Python wheel's library with headers from scripts/setup.sh:\n"
      "  -DONNXRUNTIME_LIBRARY_DIR=\"$(.venv/bin/python -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi\"\n"
      )
  endif()
  message(STATUS "gradcam: ONNX Runtime ${onnxruntime_VERSION} from its CMake config")
  set(GRADCAM_ORT_RPATH "")
  set(GRADCAM_ORT_INSTALL_LIBRARY "")
  return()
endif()

file(GLOB _ort_libs "${ONNXRUNTIME_LIBRARY_DIR}/libonnxruntime.so.1.*")
list(LENGTH _ort_libs _count)
if(NOT _count EQUAL 1)
  message(FATAL_ERROR "expected one libonnxruntime.so.1.* in ${ONNXRUNTIME_LIBRARY_DIR}, found: ${_ort_libs}")
endif()
string(REGEX MATCH "libonnxruntime\\.so\\.1\\.([0-9]+)" _ "${_ort_libs}")
set(_lib_minor "${CMAKE_MATCH_1}")

if(NOT ONNXRUNTIME_INCLUDE_DIR)
  find_path(ONNXRUNTIME_HEADERS onnxruntime_cxx_api.h
    HINTS "${CMAKE_CURRENT_SOURCE_DIR}/../build/cpp-deps/onnxruntime-dev/usr/include/onnxruntime"
          /usr/include/onnxruntime /usr/local/include/onnxruntime
    NO_DEFAULT_PATH)
  if(NOT ONNXRUNTIME_HEADERS)
    message(FATAL_ERROR "onnxruntime_cxx_api.h not found: run scripts/setup.sh (it unpacks Debian 13's "
                        "libonnxruntime-dev into build/cpp-deps) or pass -DONNXRUNTIME_INCLUDE_DIR=...")
  endif()
  set(ONNXRUNTIME_INCLUDE_DIR "${ONNXRUNTIME_HEADERS}")
endif()

# The C API table of version N exists in every library of minor version >= N.
file(STRINGS "${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_c_api.h" _api_line REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX MATCH "[0-9]+$" _api "${_api_line}")
if(_api GREATER _lib_minor)
  message(FATAL_ERROR "the ONNX Runtime headers in ${ONNXRUNTIME_INCLUDE_DIR} (API ${_api}) are newer than "
                      "${_ort_libs} (1.${_lib_minor}): use headers of version 1.${_lib_minor} or older")
endif()

# The program links libonnxruntime.so (-> .so.1 -> the wheel's file), records the SONAME
# libonnxruntime.so.1 and finds it through its RPATH in this build folder. The provider
# libraries are linked here too: ONNX Runtime looks for them next to the library's path.
set(_link_dir "${CMAKE_BINARY_DIR}/onnxruntime")
file(MAKE_DIRECTORY "${_link_dir}")
file(CREATE_LINK "${_ort_libs}" "${_link_dir}/libonnxruntime.so.1" SYMBOLIC)
file(CREATE_LINK "libonnxruntime.so.1" "${_link_dir}/libonnxruntime.so" SYMBOLIC)
file(GLOB _providers "${ONNXRUNTIME_LIBRARY_DIR}/libonnxruntime_providers_*.so")
foreach(_provider IN LISTS _providers)
  get_filename_component(_name "${_provider}" NAME)
  file(CREATE_LINK "${_provider}" "${_link_dir}/${_name}" SYMBOLIC)
endforeach()

add_library(onnxruntime::onnxruntime SHARED IMPORTED)
set_target_properties(onnxruntime::onnxruntime PROPERTIES
  IMPORTED_LOCATION "${_link_dir}/libonnxruntime.so"
  IMPORTED_SONAME "libonnxruntime.so.1"
  INTERFACE_INCLUDE_DIRECTORIES "${ONNXRUNTIME_INCLUDE_DIR}")
set(GRADCAM_ORT_RPATH "${_link_dir}")
# cmake --install puts the wheel's library (as libonnxruntime.so.1) and its providers beside libgradcam.so
set(GRADCAM_ORT_INSTALL_LIBRARY "${_ort_libs}")
set(GRADCAM_ORT_INSTALL_PROVIDERS ${_providers})
message(STATUS "gradcam: ${_ort_libs} (1.${_lib_minor}) with headers of API ${_api} from ${ONNXRUNTIME_INCLUDE_DIR}")
