"""The command line: writes a PNG carrying its parameters, never overwrites without --force."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from minisd.cli import main

FOLDER = str(Path(__file__).parent / "fixtures" / "tiny-sd")
ARGS = ["a red circle", "--weights", FOLDER, "--steps", "3", "--seed", "3"]


def test_writes_png_with_parameters(tmp_path):
    output = tmp_path / "out.png"
    code = main(
        [*ARGS, "-o", str(output), "--size", "80x48", "--negative", "blurry", "--scheduler", "ddim", "--guidance", "5"]
    )
    assert code == 0
    image = Image.open(output)
    assert image.size == (80, 48)
    assert {
        key: image.text[key]
        for key in ("prompt", "negative_prompt", "seed", "steps", "scheduler", "guidance", "size", "model")
    } == {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "seed": "3",
        "steps": "3",
        "scheduler": "ddim",
        "guidance": "5.0",
        "size": "80x48",
        "model": "tiny-sd",
    }


def test_img2img_from_the_command_line(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (70, 60), (200, 30, 30)).save(init)
    output = tmp_path / "out.png"
    assert main([*ARGS, "-o", str(output), "--init-image", str(init), "--strength", "0.7"]) == 0
    image = Image.open(output)
    assert image.size == (64, 56)  # floored to multiples of 8, as diffusers does
    assert image.text["strength"] == "0.7" and image.text["init_image"] == "init.png"
    assert (
        image.text["scheduler"] == "pndm" and image.text["size"] == "64x56"
    )  # the model's own, by its --scheduler name


def test_a_batch_of_images_gets_numbered_files(tmp_path, capsys):
    (tmp_path / "batch-2.png").write_bytes(b"the user's own file")
    assert main([*ARGS, "-o", str(tmp_path / "batch.png"), "--num-images", "3"]) == 2  # one of the names is taken
    assert "batch-2.png already exists" in capsys.readouterr().err
    assert (tmp_path / "batch-2.png").read_bytes() == b"the user's own file" and not (tmp_path / "batch-1.png").exists()
    (tmp_path / "batch-2.png").unlink()
    assert main([*ARGS, "-o", str(tmp_path / "batch.png"), "--num-images", "3"]) == 0
    images = [Image.open(tmp_path / f"batch-{index}.png") for index in (1, 2, 3)]
    assert [image.text["image_index"] for image in images] == ["1", "2", "3"]
    assert all(image.text["num_images"] == "3" and image.text["seed"] == "3" for image in images)
    assert not (tmp_path / "batch.png").exists()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    output = tmp_path / "mine.png"
    output.write_bytes(b"the user's own file")
    assert main([*ARGS, "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert "already exists" in error and "--force" in error
    assert output.read_bytes() == b"the user's own file"
    assert main([*ARGS, "-o", str(output), "--force"]) == 0
    assert Image.open(output).size == (64, 64)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "60x64"], "multiples of 8"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--weights", "/nonexistent/model"], "does not exist"),
        (["-o", "picture.jpg"], "must end in .png"),
        (["--num-images", "0"], "num_images must be an integer >= 1"),
        (["--num-images", "2", "--init-image", "any.png"], "--num-images makes a batch from text only"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    args = [*ARGS, "-o", str(tmp_path / "out.png"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    output = tmp_path / "m.png"
    run = subprocess.run([sys.executable, "-m", "minisd", *ARGS, "-o", str(output)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "denoising" in run.stderr  # the tqdm progress bar
    assert Image.open(output).text["prompt"] == "a red circle"


def test_text_options_are_recorded(tmp_path):
    output = tmp_path / "out.png"
    assert main([*ARGS, "-o", str(output), "--clip-skip", "1", "--long-prompt", "chunk"]) == 0
    image = Image.open(output)
    assert image.text["clip_skip"] == "1" and image.text["long_prompt"] == "chunk"


def test_config_is_for_single_files(tmp_path, capsys):
    assert main([*ARGS, "-o", str(tmp_path / "out.png"), "--config", "prediction_type=epsilon"]) == 2
    assert "carries its own config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*ARGS, "--config", "prediction_type"])
    assert "--config takes KEY=VALUE" in capsys.readouterr().err


def test_memory_options_reach_the_pipeline_and_are_recorded(tmp_path):
    """--weights-dtype float16 and --vae-tiling give the picture the Python API gives with the
    same options (128x80 is larger than the fixture VAE's 64-pixel tiles), and say so in the PNG."""
    import numpy as np

    import minisd

    output = tmp_path / "out.png"
    assert main([*ARGS, "-o", str(output), "--size", "128x80", "--weights-dtype", "float16", "--vae-tiling"]) == 0
    image = Image.open(output)
    assert image.text["weights_dtype"] == "float16" and image.text["vae_tiling"] == "True"
    pipe = minisd.load(FOLDER, weights_dtype="float16")
    assert pipe.unet.conv_in.weight.dtype == np.float16
    expected = pipe("a red circle", steps=3, seed=3, height=80, width=128, vae_tiling=True, progress=False)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
