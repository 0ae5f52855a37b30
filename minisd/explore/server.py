"""The explorer's web server: one page, a small JSON API, and each run streamed as server-sent events.

    GET  /              the page (static/index.html; its script and style under /static/)
    GET  /api/model     the model: its name, defaults, schedulers, sizes and the request limits
    POST /api/tokens    {"prompt"} -> the prompt's BPE pieces and ids, and what is cut off past 75
    POST /api/run       {"prompt", "seed", "steps", ...} -> text/event-stream: "queued", "prompt",
                        one "step" per denoising step, then "done" (or "error")

A Starlette app served by uvicorn. The weights are chosen when the server starts; no request
names a file. A bad request gets a 4xx and {"error": message}; a client that closes its stream
cancels its run.
"""

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
import traceback
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..pipeline import load
from ..schedulers import SCHEDULERS, scheduler_name
from ..weights import WeightsError, default_model_folder
from . import checks
from .checks import BadRequest
from .runner import FINAL, Run, Runner
from .views import prompt_tokens

STATIC = Path(__file__).resolve().parent / "static"
LOCAL_NAMES = ("127.0.0.1", "localhost")  # how this machine's browser addresses a server on 127.0.0.1
# the page loads nothing from elsewhere, and no other site may frame it
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def make_app(pipe, max_waiting=32, hosts=LOCAL_NAMES):
    """The explorer's ASGI app for a loaded Pipeline. It answers requests addressed to `hosts` only
    (None: any), so that a web page whose name is made to point at 127.0.0.1 (DNS rebinding) cannot
    use a local explorer."""
    runner = Runner(pipe, max_waiting)

    async def page(request):
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    async def model(request):
        return JSONResponse(model_info(pipe, max_waiting))

    async def tokens(request):
        prompt = checks.prompt(await read_json(request))
        return JSONResponse(prompt_tokens(pipe.tokenizer, prompt))

    async def run(request):
        prompt, options = checks.run_request(await read_json(request), pipe)
        job = Run(prompt, options, asyncio.get_running_loop())
        runner.submit(job)
        return StreamingResponse(
            stream(request, runner, job), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    routes = [
        Route("/", page),
        Route("/api/model", model),
        Route("/api/tokens", tokens, methods=["POST"]),
        Route("/api/run", run, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    handlers = {BadRequest: refused, HTTPException: http_error, Exception: failed}

    @asynccontextmanager
    async def lifespan(app):
        yield
        runner.close()  # the server stops: so do the runs

    checked_hosts = [Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))] if hosts else []
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan, middleware=checked_hosts)
    app.state.runner = runner
    return app


def model_info(pipe, max_waiting):
    return {
        "name": pipe.name,
        "defaults": {
            "steps": pipe.defaults["steps"],
            "guidance": pipe.defaults["guidance"],
            "width": pipe.defaults["width"],
            "height": pipe.defaults["height"],
            "scheduler": scheduler_name(pipe.scheduler_config),
        },
        "schedulers": list(SCHEDULERS),
        "sizes": checks.sizes(pipe),
        "limits": {
            "steps": checks.MAX_STEPS,
            "guidance": checks.MAX_GUIDANCE,
            "seed": checks.MAX_SEED,
            "prompt_chars": checks.MAX_PROMPT_CHARS,
            "upload_bytes": checks.MAX_UPLOAD_BYTES,
            "upload_pixels": checks.MAX_UPLOAD_PIXELS,
            "waiting_runs": max_waiting,
        },
    }


async def read_json(request):
    """The request's body as a JSON object, at most MAX_BODY_BYTES long."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > checks.MAX_BODY_BYTES:
            raise BadRequest(f"the request is over {checks.MAX_BODY_BYTES // 2**20} MB", 413)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested past Python's recursion limit
        raise BadRequest('the request body must be JSON, e.g. {"prompt": "a red circle"}') from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, not a {type(value).__name__}")
    return value


async def stream(request, runner, run):
    """The run's events as server-sent events: its place in the queue while it waits, then its
    steps as they come. Leaving (the client closes the stream) cancels the run: noticed within a
    quarter of a second while the run waits or computes a step, or when an event cannot be sent."""
    try:
        shown = None
        while True:
            try:
                event = await asyncio.wait_for(run.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # asked here too: servers of ASGI spec 2.4 only tell on a send
                    return
                position = runner.position(run)
                if position is not None and position != shown:
                    shown = position
                    yield sse({"type": "queued", "position": position})
                continue
            yield sse(event)
            if event["type"] in FINAL:
                return
    finally:
        runner.cancel(run)


def sse(event):
    return f"data: {json.dumps(event)}\n\n"


async def refused(request, error):
    return JSONResponse({"error": str(error)}, status_code=error.status)


async def http_error(request, error):
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def failed(request, error):
    traceback.print_exception(error)
    return JSONResponse({"error": f"the server failed: {type(error).__name__}"}, status_code=500)


@contextmanager
def running(app, host="127.0.0.1", port=0):
    """`app` (make_app's) served from a background thread while the `with` block runs; yields its address."""
    listener = socket.create_server((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield address(listener)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def address(listener):
    """The URL of a listening socket: http://127.0.0.1:8765, http://[::1]:8765."""
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="minisd explore", description="The explorer: watch Stable Diffusion work, step by step, in the browser."
    )
    parser.add_argument("--weights", help="model folder or single-file .safetensors (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--queue", type=at_least_one, default=32, help="runs that may wait for their turn (default: 32)"
    )
    return parser.parse_args(argv)


def at_least_one(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pipe = load(args.weights or default_model_folder(), args.backend, args.dtype)
        listener = socket.create_server((args.host, args.port))
    except (WeightsError, ValueError, FileNotFoundError, ImportError, OSError) as error:
        print(f"minisd explore: error: {error}", file=sys.stderr)
        return 2
    print(f"minisd explorer: {address(listener)}/  (model {pipe.name}; Ctrl+C stops it)", flush=True)
    hosts = LOCAL_NAMES if args.host == "127.0.0.1" else None  # --host: addressed by whatever name it has
    server = uvicorn.Server(uvicorn.Config(make_app(pipe, args.queue, hosts), log_level="warning"))
    server.run(sockets=[listener])
    return 0
