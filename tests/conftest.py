"""Shared fixtures. Live-parity fixtures need the `reference` extra (torch, diffusers,
transformers); without it, the tests that use them are skipped with that reason."""

import pytest

REFERENCE_MISSING = "live parity needs the reference extra: pip install -e '.[reference]'"


def require_reference():
    """Import torch, diffusers and transformers, or skip the test saying how to install them."""
    for name in ("torch", "diffusers", "transformers"):
        pytest.importorskip(name, reason=REFERENCE_MISSING)


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
