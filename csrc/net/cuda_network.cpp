// Placeholder: the CUDA network runtime lands here.
