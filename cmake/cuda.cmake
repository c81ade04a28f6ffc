# CUDA backend build. Included by csrc/CMakeLists.txt (so source paths are relative to csrc/)
# after the CPU core (pylenet_core) and before the Python module _C. PYLENET_CUDA (cache, set by the top-level CMakeLists.txt):
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
  # Architectures. The full list (PYLENET_CUDA_ARCHS=all, for wheels): Turing through Hopper as
  # real code (SASS) plus PTX of the newest, which the driver compiles at load time for later
  # GPUs. CUDA 13 dropped offline compilation for sm_70/sm_72 (Volta), so with CUDA >= 13 the
  # list starts at Turing (sm_75); Volta users need a CUDA 12 build. Older toolkits stop where
  # their support does (11.1: sm_86, 11.8: sm_89 and sm_90).
  # By default (a local `pip install .`) only what this machine needs: SASS for the GPUs that
  # nvidia-smi reports, or, with none, one architecture as PTX, so the CUDA code is still
  # compiled and checked (about a fifth of the full list's build time) and runs, JIT-compiled,
  # on any GPU that appears later. PYLENET_CUDA_ARCHS (environment or -D) may also be a list
  # such as "80;90". CMAKE_CUDA_ARCHITECTURES or CUDAARCHS, when set, win over all of this.
  # (Our choice is cached with a marker, so a later configure of the same build folder, e.g.
  # a second `pip install .` with another PYLENET_CUDA_ARCHS, chooses again; a value the user
  # set is never touched.)
  if((NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "${_PYLENET_CHOSEN_ARCHS}")
     AND NOT DEFINED ENV{CUDAARCHS})
    if(NOT DEFINED PYLENET_CUDA_ARCHS AND DEFINED ENV{PYLENET_CUDA_ARCHS})
      set(PYLENET_CUDA_ARCHS "$ENV{PYLENET_CUDA_ARCHS}")
    endif()
    execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version OUTPUT_VARIABLE _pyl_nvcc_out ERROR_QUIET)
    set(_pyl_nvcc_version 0)
    if(_pyl_nvcc_out MATCHES "release ([0-9]+\\.[0-9]+)")
      set(_pyl_nvcc_version "${CMAKE_MATCH_1}")
    endif()
    if(_pyl_nvcc_version VERSION_GREATER_EQUAL 13.0)
      set(_pyl_all 75-real 80-real 86-real 89-real 90-real 90-virtual)
      set(_pyl_min 75)
    elseif(_pyl_nvcc_version VERSION_GREATER_EQUAL 11.8)
      set(_pyl_all 70-real 75-real 80-real 86-real 89-real 90-real 90-virtual)
      set(_pyl_min 70)
    elseif(_pyl_nvcc_version VERSION_GREATER_EQUAL 11.1)
      set(_pyl_all 70-real 75-real 80-real 86-real 86-virtual)
      set(_pyl_min 70)
    else()
      set(_pyl_all 70-real 75-real 80-real 80-virtual)
      set(_pyl_min 70)
    endif()
    if(DEFINED PYLENET_CUDA_ARCHS AND PYLENET_CUDA_ARCHS STREQUAL "all")
      set(_pyl_archs ${_pyl_all})
      set(_pyl_why "PYLENET_CUDA_ARCHS=all")
    elseif(DEFINED PYLENET_CUDA_ARCHS AND NOT PYLENET_CUDA_ARCHS STREQUAL "")
      set(_pyl_archs ${PYLENET_CUDA_ARCHS})
      set(_pyl_why "PYLENET_CUDA_ARCHS")
    else()
      set(_pyl_archs "")
      execute_process(COMMAND nvidia-smi --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _pyl_caps ERROR_QUIET RESULT_VARIABLE _pyl_smi)
      if(_pyl_smi EQUAL 0)
        string(REGEX MATCHALL "[0-9]+\\.[0-9]+" _pyl_caps "${_pyl_caps}")
        foreach(_cap IN LISTS _pyl_caps)
          string(REPLACE "." "" _cap "${_cap}")
          if(_cap GREATER_EQUAL _pyl_min)
            list(APPEND _pyl_archs "${_cap}-real")
          endif()
        endforeach()
        list(REMOVE_DUPLICATES _pyl_archs)
      endif()
      if(_pyl_archs)
        set(_pyl_why "the GPUs nvidia-smi reports")
      else()
        set(_pyl_archs "${_pyl_min}-virtual")
        set(_pyl_why "no GPU seen: PTX only; PYLENET_CUDA_ARCHS=all builds the full list")
      endif()
    endif()
    set(CMAKE_CUDA_ARCHITECTURES "${_pyl_archs}" CACHE STRING "CUDA architectures (pylenet: ${_pyl_why})" FORCE)
    set(_PYLENET_CHOSEN_ARCHS "${_pyl_archs}" CACHE INTERNAL "the architectures pylenet chose")
  endif()

  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  # Host-only code (allocator, context, graph: runtime API calls, no kernels) is plain C++ for the
  # host compiler: nvcc would compile it once per architecture for nothing.
  add_library(pylenet_cuda STATIC
    cuda/allocator.cpp
    cuda/context.cpp
    cuda/graph.cpp
    cuda/tensor.cpp
    cuda/gemm.cu
    cuda/conv.cu
    cuda/pool.cu
    cuda/linear.cu
    cuda/activation.cu
    cuda/elementwise.cu
    cuda/batchnorm.cu
    cuda/softmax.cu
    cuda/loss.cu
    cuda/optim.cu
    cuda/train.cu
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
  target_include_directories(pylenet_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
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
  set_source_files_properties(cuda/optim.cu cuda/activation.cu PROPERTIES
    COMPILE_OPTIONS "--fmad=false")

  # Opt-in, not built by default: the kernels' index arithmetic checked on the CPU
  # (cuda/host_check.cu), for machines without a GPU. One architecture: it never runs
  # device code, it only has to link.
  option(PYLENET_CUDA_HOST_CHECK "Build pylenet_cuda_host_check (CUDA index math run on the CPU)" OFF)
  if(PYLENET_CUDA_HOST_CHECK)
    add_executable(pylenet_cuda_host_check cuda/host_check.cu)
    set_target_properties(pylenet_cuda_host_check PROPERTIES CUDA_ARCHITECTURES 75-real CUDA_STANDARD 17
                          CUDA_RUNTIME_LIBRARY Static)
    target_link_libraries(pylenet_cuda_host_check PRIVATE pylenet_core CUDA::cudart_static)
  endif()

  message(STATUS "pylenet: building the CUDA kernels (PYLENET_CUDA=${PYLENET_CUDA}): nvcc "
                 "${CMAKE_CUDA_COMPILER_VERSION} at ${CMAKE_CUDA_COMPILER}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}, static CUDA runtime")
endif()
