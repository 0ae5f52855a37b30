"""Shared fixtures, and the tiers' markers at work: a test marked `reference` (it needs torch,
diffusers and transformers) is skipped with the reason when they are missing. Helpers shared
by tests live in helpers.py (no reference library) and reference.py (torch side)."""

import pytest

from helpers import require_reference


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference"):
        require_reference()


@pytest.fixture(scope="session")
def sd15(tmp_path_factory):
    """Full-size SD 1.5 architecture with random weights: (folder, torch modules)."""
    require_reference()
    from reference import build_models, save_model_folder

    models = build_models()
    folder = save_model_folder(tmp_path_factory.mktemp("sd15"), *models)
    return folder, models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny model of the SD family with random weights: (folder, torch modules)."""
    require_reference()
    from reference import TINY_TEXT, TINY_UNET, TINY_VAE, build_models, save_model_folder

    models = build_models(TINY_TEXT, TINY_UNET, TINY_VAE, seed=10)
    folder = save_model_folder(tmp_path_factory.mktemp("tiny"), *models)
    return folder, models


# Scripts that are not tests (the GPU check, the graph-capture probe) live in scripts/.
collect_ignore = ["scripts"]
