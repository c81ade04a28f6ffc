# CUDA backend build (PYLENET_CUDA=AUTO|ON|OFF). Included by CMakeLists.txt after the CPU core.
# Placeholder until the CUDA kernels land: reports the option only.
message(STATUS "pylenet: PYLENET_CUDA=${PYLENET_CUDA} (no CUDA sources yet)")
