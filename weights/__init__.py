"""The embedded model (weights/minisd-shapes/), installed as the package `minisd.models`."""
