"""Score the embedded model: generate every (colour, shape, background) and judge the pictures.

    python weights/training/evaluate.py [--weights weights/minisd-shapes] [--seeds 3]

Generation is minisd's own (NumPy backend), with seeds never used in training; each picture is
judged by shapes.judge (background from the border, object colour from the nearest palette
colour, shape from how much of its bounding box the object fills). Prints the accuracy of each
attribute and writes evaluation.json and samples.png (one picture per combination) into the
model folder.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))
import minisd  # noqa: E402
from shapes import COMBINATIONS, HELD_OUT, caption, judge  # noqa: E402

FIRST_SEED = 10_000  # training drew its noise from torch generators, never from these seeds


def evaluate(pipe, seeds, first_seed=FIRST_SEED, **options):
    """Generate and judge `seeds` pictures of every combination: (records, pictures)."""
    records, pictures = [], []
    for index, combination in enumerate(COMBINATIONS):
        for seed in range(first_seed + index * seeds, first_seed + (index + 1) * seeds):
            image = pipe(caption(*combination), seed=seed, progress=False, **options)
            records.append({"combination": combination, "seed": seed, "judged": judge(image)})
            pictures.append(image)
    return records, pictures


def expected(combination):
    """(background, colour, shape): what judge() should read from a picture of `combination`."""
    colour, shape, background = combination
    return background, colour, shape


def accuracy(records):
    """Share of pictures whose background, colour, shape (and all three) were judged right."""
    right = np.array([[a == b for a, b in zip(r["judged"], expected(r["combination"]))] for r in records])
    scores = dict(zip(("background", "colour", "shape"), right.mean(axis=0)))
    return {**scores, "all three": right.all(axis=1).mean()}


def grid(pictures, columns):
    width, height = pictures[0].size
    rows = (len(pictures) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for i, picture in enumerate(pictures):
        sheet.paste(picture, ((i % columns) * width, (i // columns) * height))
    return sheet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(HERE.parent / "minisd-shapes"))
    parser.add_argument("--seeds", type=int, default=3, help="pictures per combination")
    parser.add_argument("--guidance", type=float, help="default: the model's")
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=FIRST_SEED,
        help="choose defaults on other seeds (e.g. 20000) than the reported evaluation",
    )
    parser.add_argument(
        "--held-out", action="store_true", help="also score shapes.HELD_OUT apart (train.py --hold-out)"
    )
    args = parser.parse_args()
    pipe = minisd.load(args.weights)
    options = {k: v for k, v in (("guidance", args.guidance), ("steps", args.steps)) if v is not None}
    started = time.time()
    records, pictures = evaluate(pipe, args.seeds, args.first_seed, **options)
    groups = {"all": records}
    if args.held_out:
        groups["held out"] = [r for r in records if r["combination"] in HELD_OUT]
        groups["seen"] = [r for r in records if r["combination"] not in HELD_OUT]
    report = {
        "seeds_per_combination": args.seeds,
        "first_seed": args.first_seed,
        "options": {**pipe.defaults, **options},
        "seconds": round(time.time() - started),
        "accuracy": {},
    }
    for name, group in groups.items():
        report["accuracy"][name] = {key: round(float(value), 4) for key, value in accuracy(group).items()}
        print(
            f"{name} ({len(group)} pictures): " + ", ".join(f"{k} {v:.1%}" for k, v in report["accuracy"][name].items())
        )
    report["misses"] = [r for r in records if tuple(r["judged"]) != expected(r["combination"])]
    folder = Path(args.weights)
    (folder / "evaluation.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    grid(pictures[:: args.seeds], columns=9).save(folder / "samples.png")
    print(f"wrote {folder / 'evaluation.json'} and {folder / 'samples.png'}")


if __name__ == "__main__":
    main()
