"""omniopd_kernels: Triton kernels (and PyTorch references) for on-policy distillation."""
