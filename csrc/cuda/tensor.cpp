// Placeholder: the device tensor lands here (see csrc/cuda/tensor.h).
