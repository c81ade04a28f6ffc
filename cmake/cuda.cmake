# CUDA backend build. Included by CMakeLists.txt after the CPU core (pylenet_core) and
# before the Python module _C. PYLENET_CUDA (cache, set by CMakeLists.txt):
#   AUTO - build the CUDA kernels iff a CUDA compiler is found (check_language)
#   ON   - required: stop with an error when there is none
#   OFF  - never
# Results, for the top-level file (this is an include(), so plain variables are visible):
#   PYLENET_WITH_CUDA    ON / OFF: whether the CUDA kernels (target pylenet_cuda) are built
# pylenet_cuda carries PYLENET_HAVE_CUDA as a PUBLIC compile definition, and pylenet_core (the
# op layer and executor, whose device branches call the kernels) links it, so everything built
# on the core sees the macro.

set(PYLENET_WITH_CUDA OFF)

string(TOUPPER "${PYLENET_CUDA}" _pyl_cuda_mode)
if(_pyl_cuda_mode MATCHES "^(ON|TRUE|YES|Y|1)$")
  set(_pyl_cuda_mode ON)
elseif(_pyl_cuda_mode MATCHES "^(OFF|FALSE|NO|N|0)$")
  set(_pyl_cuda_mode OFF)
elseif(NOT _pyl_cuda_mode STREQUAL "AUTO")
  message(FATAL_ERROR "pylenet: PYLENET_CUDA must be AUTO, ON or OFF, got '${PYLENET_CUDA}'")
endif()

if(_pyl_cuda_mode STREQUAL "OFF")
  message(STATUS "pylenet: CUDA kernels not built (PYLENET_CUDA=OFF)")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    if(_pyl_cuda_mode STREQUAL "ON")
      message(FATAL_ERROR
        "pylenet: PYLENET_CUDA=ON but no working CUDA compiler was found. Put nvcc on PATH, or "
        "set CUDACXX / -DCMAKE_CUDA_COMPILER=/path/to/nvcc, or configure with "
        "-DPYLENET_CUDA=AUTO (or OFF) to build the CPU kernels only.")
    endif()
    message(STATUS "pylenet: no CUDA compiler found, CUDA kernels not built (PYLENET_CUDA=AUTO)")
  else()
    set(PYLENET_WITH_CUDA ON)
  endif()
endif()

if(PYLENET_WITH_CUDA)
  # Architectures: Volta through Hopper as real code (SASS) plus PTX of the newest, which
  # the driver compiles at load time for later GPUs. CUDA 13 dropped offline compilation
  # for sm_70/sm_72 (Volta), so with CUDA >= 13 the list starts at Turing (sm_75); Volta
  # users need a CUDA 12 build. Older toolkits stop where their support does (11.1: sm_86,
  # 11.8: sm_89 and sm_90). One SASS per generation people train on: 8.7 (Orin) and 7.2
  # (Xavier) are embedded boards; 8.9 needs its own (8.6 code would run, but slower).
  # The choice goes into CMAKE_CUDA_ARCHITECTURES before enable_language(), and only when
  # the user set neither it nor CUDAARCHS; it is then cached, so a re-configure keeps it
  # and -DCMAKE_CUDA_ARCHITECTURES=... still overrides it. The version comes from nvcc
  # itself because CMAKE_CUDA_COMPILER_VERSION exists only after enable_language().
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version OUTPUT_VARIABLE _pyl_nvcc_out ERROR_QUIET)
    if(_pyl_nvcc_out MATCHES "release ([0-9]+\\.[0-9]+)")
      set(_pyl_nvcc_version "${CMAKE_MATCH_1}")
      if(_pyl_nvcc_version VERSION_GREATER_EQUAL 13.0)
        set(_pyl_archs 75-real 80-real 86-real 89-real 90-real 90-virtual)
      elseif(_pyl_nvcc_version VERSION_GREATER_EQUAL 11.8)
        set(_pyl_archs 70-real 75-real 80-real 86-real 89-real 90-real 90-virtual)
      elseif(_pyl_nvcc_version VERSION_GREATER_EQUAL 11.1)
        set(_pyl_archs 70-real 75-real 80-real 86-real 86-virtual)
      else()
        set(_pyl_archs 70-real 75-real 80-real 80-virtual)
      endif()
      set(CMAKE_CUDA_ARCHITECTURES "${_pyl_archs}" CACHE STRING
          "CUDA architectures (pylenet's default for nvcc ${_pyl_nvcc_version})")
    endif()  # not nvcc: the compiler's own default
  endif()

  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  # Host-only code (allocator, context: runtime API calls, no kernels) is plain C++ for the
  # host compiler: nvcc would compile it once per architecture for nothing.
  add_library(pylenet_cuda STATIC
    csrc/cuda/allocator.cpp
    csrc/cuda/context.cpp
    csrc/cuda/tensor.cpp
    csrc/cuda/gemm.cu
    csrc/cuda/conv.cu
    csrc/cuda/pool.cu
    csrc/cuda/linear.cu
    csrc/cuda/activation.cu
    csrc/cuda/elementwise.cu
    csrc/cuda/batchnorm.cu
    csrc/cuda/softmax.cu
    csrc/cuda/loss.cu
    csrc/cuda/optim.cu
    csrc/cuda/train.cu
  )
  set_target_properties(pylenet_cuda PROPERTIES
    CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON
    CXX_STANDARD 17
    CXX_STANDARD_REQUIRED ON
    POSITION_INDEPENDENT_CODE ON
    # Static runtime: a wheel then needs only the NVIDIA driver, not a CUDA toolkit.
    CUDA_RUNTIME_LIBRARY Static
    # No relocatable device code: every kernel lives in one .cu, so no device-link step.
    CUDA_SEPARABLE_COMPILATION OFF)
  target_include_directories(pylenet_cuda PUBLIC ${PROJECT_SOURCE_DIR}/csrc)
  target_link_libraries(pylenet_cuda PUBLIC CUDA::cudart_static)
  target_compile_definitions(pylenet_cuda PUBLIC PYLENET_HAVE_CUDA)
  # The op layer and the executor (in pylenet_core) send calls to these kernels: core links
  # them, and they use core's descriptors (a cycle of static libraries, which CMake resolves).
  target_link_libraries(pylenet_core PUBLIC pylenet_cuda)
  target_link_libraries(pylenet_cuda PUBLIC pylenet_core)
  target_compile_options(pylenet_cuda PRIVATE
    # The warnings of pylenet_core, for host code on both compilers; register spills
    # reported by ptxas (one is expected: see loss.cu).
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-warn-spills>)
  # Element-wise files: unfused multiply-add keeps them bit-identical to the CPU kernels
  # (see the comments at the top of each file); they are memory-bound, so it costs nothing.
  set_source_files_properties(csrc/cuda/optim.cu csrc/cuda/activation.cu PROPERTIES
    COMPILE_OPTIONS "--fmad=false")

  # Opt-in, not built by default: the kernels' index arithmetic checked on the CPU
  # (csrc/cuda/host_check.cu), for machines without a GPU. One architecture: it never runs
  # device code, it only has to link.
  option(PYLENET_CUDA_HOST_CHECK "Build pylenet_cuda_host_check (CUDA index math run on the CPU)" OFF)
  if(PYLENET_CUDA_HOST_CHECK)
    add_executable(pylenet_cuda_host_check csrc/cuda/host_check.cu)
    set_target_properties(pylenet_cuda_host_check PROPERTIES CUDA_ARCHITECTURES 75-real CUDA_STANDARD 17
                          CUDA_RUNTIME_LIBRARY Static)
    target_link_libraries(pylenet_cuda_host_check PRIVATE pylenet_core CUDA::cudart_static)
  endif()

  message(STATUS "pylenet: building the CUDA kernels (PYLENET_CUDA=${PYLENET_CUDA}): nvcc "
                 "${CMAKE_CUDA_COMPILER_VERSION} at ${CMAKE_CUDA_COMPILER}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}, static CUDA runtime")
endif()
