"""The explorer: "The Illustrated Stable Diffusion" live in the browser, on the code you read.

`minisd explore` (or `python -m minisd.explore`) starts a local web server (server.py) whose one
page (static/) follows the article's diagram, text encoder -> image information creator -> image
decoder, and opens each box onto what the code computes, step by step, for any prompt: the
prompt's tokens and vectors, every denoising step's latents, x̂₀, noise, guidance and
cross-attention (views.py), streamed as they are computed, one run at a time (runner.py), every
request checked first (checks.py). Needs the `explore` extra: pip install 'minisd[explore]'.
"""

import sys


def main(argv=None):
    """minisd explore / python -m minisd.explore: the server, or what to install when its libraries are missing."""
    try:
        from .server import main as serve
    except ImportError as error:
        print(f"minisd explore: error: {error}; install it with pip install 'minisd[explore]'", file=sys.stderr)
        return 2
    return serve(argv)
