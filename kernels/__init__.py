"""CUDA sources for minisd's GPU backend, installed as the package `minisd.kernels`."""
