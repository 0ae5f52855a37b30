"""The explorer (minisd/explore/) and what it watches (minisd/watch.py), on the embedded model.

What it shows is checked against values computed here another way: x̂₀ against the scheduler's
own step, the guidance halves against the pipeline's guided prediction, the attention weights
summing to 1, every step's picture against `pipe.denoise` and the last against `pipe.generate`.
Then every endpoint of the HTTP API on a real server, with each bad input refused with its 4xx.
"""

import base64
import io
import json
import re
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import minisd
from helpers import TINY_SD
from minisd import cli
from minisd.explore import checks
from minisd.explore import server as server_main
from minisd.explore.server import STATIC, make_app, running
from minisd.explore.views import run_events
from minisd.schedulers import SCHEDULERS, make_scheduler
from minisd.watch import clean_and_noise, token_maps, watch_unet

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def pipe():
    return minisd.load(minisd.default_model_folder())


def watched_steps(pipe, **given):
    """Every step of a run with the UNet call it made, and the scheduler it ran (the same, made again)."""
    options = pipe.options(**given)
    scheduler = make_scheduler(options.scheduler, pipe.scheduler_config)
    scheduler.set_timesteps(options.steps)
    calls, steps = [], []
    with watch_unet(pipe.unet, calls.append):
        for step in pipe.denoise(PROMPT, options):
            steps.append((step, calls.pop()))
    return scheduler, steps


def test_x0_is_what_ddim_steps_from(pipe):
    """DDIM puts x̂₀ back at the next noise level: x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂ (eta 0),
    with ᾱ read here from the scheduler's table; and x̂₀ is v-prediction's √ᾱ x_t − √(1−ᾱ) v."""
    scheduler, steps = watched_steps(pipe, steps=6, scheduler="ddim", seed=3)
    alphas = scheduler.alphas_cumprod
    assert scheduler.config.prediction_type == "v_prediction"
    for step, call in steps:
        t = int(step.timestep)
        x_t = call.sample[-1:]
        x0, noise = clean_and_noise(scheduler, step.index, step.count, x_t, step.noise_pred)
        np.testing.assert_allclose(x0, np.sqrt(alphas[t]) * x_t - np.sqrt(1 - alphas[t]) * step.noise_pred, atol=1e-5)
        t_prev = t - scheduler.step_ratio
        a_prev = alphas[t_prev] if t_prev >= 0 else alphas[0]  # set_alpha_to_one is false in this model
        np.testing.assert_allclose(step.latents, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * noise, atol=1e-4)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m_karras"])
def test_x0_in_sigma_space_is_the_samplers_denoised(pipe, name):
    """A sigma-space sampler's UNet sees x / √(σ²+1); x̂₀ is its denoiser D(x; σ) on x = x_t √(σ²+1)."""
    scheduler, steps = watched_steps(pipe, steps=5, scheduler=name, seed=1)
    for step, call in steps:
        sigma = scheduler.sigmas[step.index]
        x_t = call.sample[-1:]
        x0, _ = clean_and_noise(scheduler, step.index, step.count, x_t, step.noise_pred)
        denoised = scheduler._denoised(step.noise_pred, x_t * np.sqrt(sigma * sigma + 1), sigma)
        np.testing.assert_allclose(x0, denoised, atol=1e-4)


def test_the_watched_halves_are_what_guidance_mixes(pipe):
    """The UNet's output without and with the prompt, mixed by s, is the pipeline's guided prediction."""
    _, steps = watched_steps(pipe, steps=3, guidance=4.0, negative_prompt="a blue square")
    for step, call in steps:
        without, with_prompt = call.output[:1], call.output[1:]
        np.testing.assert_allclose(step.noise_pred, without + 4.0 * (with_prompt - without), atol=1e-5)
        np.testing.assert_array_equal(call.sample[0], call.sample[1])  # one x_t, seen twice


def test_attention_maps_sum_to_one_and_watching_changes_nothing(pipe):
    _, steps = watched_steps(pipe, steps=3, seed=5)
    plain = list(pipe.denoise(PROMPT, steps=3, seed=5))
    for (step, call), unwatched in zip(steps, plain):
        np.testing.assert_array_equal(step.latents, unwatched.latents)
        assert call.attention.shape == (2, 8, 8, 77)  # guidance 1.5: [negative; prompt], latents 8x8, 77 tokens
        np.testing.assert_allclose(call.attention.sum(axis=-1), 1, atol=1e-4)
    names = [name for name, _ in token_maps(pipe.tokenizer, PROMPT, steps[0][1].attention[-1])]
    assert names == ["<start>", "a", "red", "circle", "on", "a", "white", "background", "<end> + padding"]


def decode_png(data_url):
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=int)


def test_step_pictures_are_the_pipelines(pipe):
    """Each step's picture is pipe.decode of pipe.denoise's latents, its x̂₀ the decode of the sampler's own
    denoised estimate; the last picture is pipe.generate's image."""
    given = dict(steps=4, seed=7, guidance=3.0, scheduler="euler_a")
    events = list(run_events(pipe, PROMPT, pipe.options(prompt_weights=False, **given)))
    assert [event["type"] for event in events] == ["prompt"] + ["step"] * 4
    tokens = events[0]["tokens"]
    assert [token["id"] for token in tokens] == list(pipe.tokenizer.encode(PROMPT)[0][: len(tokens)])
    scheduler, steps = watched_steps(pipe, **given)
    for event, (step, call) in zip(events[1:], steps):
        np.testing.assert_array_equal(decode_png(event["latents"]), np.asarray(pipe.decode(step.latents)))
        sigma = scheduler.sigmas[step.index]  # x̂₀ by Euler a's own denoiser, from x = x_t √(σ²+1)
        x0 = scheduler._denoised(step.noise_pred, call.sample[-1:] * np.sqrt(sigma * sigma + 1), sigma)
        assert np.abs(decode_png(event["x0"]) - np.asarray(pipe.decode(x0), dtype=int)).max() <= 1  # float rounding
        assert set(event["guidance"]) >= {"without", "with", "difference", "guided"}
        assert len(event["attention"]["tokens"]) == 9
    final = np.asarray(pipe(PROMPT, progress=False, **given))
    np.testing.assert_array_equal(decode_png(events[-1]["latents"]), final)
    assert events[1]["timestep"] > events[-1]["timestep"] and events[1]["noise_level"] > events[-1]["noise_level"]


# ---------------------------------------------------------------- the HTTP API, on a real server


@pytest.fixture(scope="module")
def app(pipe):
    return make_app(pipe, max_waiting=3)


@pytest.fixture(scope="module")
def server(app):
    with running(app) as address:
        yield address


def run_events_over_http(server, body, timeout=60):
    """POST /api/run and read its server-sent events to the end: (status, [events] or the error)."""
    with httpx.stream("POST", f"{server}/api/run", json=body, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.json()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        return 200, events


def test_page_and_its_files_are_served_and_need_no_network(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "/static/style.css" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")  # the browser loads nothing else
    for name in ("app.js", "style.css", "index.html"):
        response = httpx.get(f"{server}/static/{name}")
        assert response.status_code == 200 and response.text == (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", response.text), f"{name} fetches from the network"


def test_requests_for_another_host_name_are_refused(server):
    """A page whose name was made to point at 127.0.0.1 (DNS rebinding) cannot use the explorer."""
    response = httpx.get(f"{server}/api/model", headers={"Host": "attacker.example"})
    assert response.status_code == 400 and "Invalid host header" in response.text
    assert httpx.get(f"{server.replace('127.0.0.1', 'localhost')}/api/model").status_code == 200


def test_model_endpoint(server, pipe):
    model = httpx.get(f"{server}/api/model").json()
    assert model["name"] == "minisd-shapes"
    assert model["defaults"] == {"steps": 20, "guidance": 1.5, "width": 64, "height": 64, "scheduler": "ddim"}
    assert model["schedulers"] == list(SCHEDULERS) and model["sizes"] == [32, 40, 48, 56, 64]


def test_tokens_endpoint(server, pipe):
    answer = httpx.post(f"{server}/api/tokens", json={"prompt": "a red circle"}).json()
    assert [t["piece"] for t in answer["tokens"]] == ["<start>", "a</w>", "red</w>", "circle</w>", "<end>"]
    assert [t["id"] for t in answer["tokens"]] == list(pipe.tokenizer.encode("a red circle")[0][:5])
    assert answer["cut"] is None
    long = httpx.post(f"{server}/api/tokens", json={"prompt": "red " * 80}).json()
    assert len(long["tokens"]) == 77 and long["cut"] == "red red red red red"  # 75 fit between start and end


def test_a_run_streams_every_view(server):
    status, events = run_events_over_http(server, {"prompt": PROMPT, "steps": 3, "seed": 2, "guidance": 2.0})
    assert status == 200
    assert [event["type"] for event in events if event["type"] != "queued"] == [
        "prompt",
        "step",
        "step",
        "step",
        "done",
    ]
    for event in events[1:-1]:
        for view in ("latents", "x0", "noise", "channels"):
            assert decode_png(event[view]).size > 0
        assert all(decode_png(token["map"]).shape == (8, 8, 3) for token in event["attention"]["tokens"])


def png_bytes(size=(64, 64), colour=(200, 30, 30), format="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=format)
    return buffer.getvalue()


def data_url(data, kind="png"):
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def test_image_to_image_run_is_pipe_img2img(server, pipe):
    body = {"prompt": PROMPT, "steps": 4, "seed": 1, "image": data_url(png_bytes()), "strength": 0.5}
    status, events = run_events_over_http(server, body)
    assert status == 200 and events[-1]["type"] == "done"
    steps = [event for event in events if event["type"] == "step"]
    assert len(steps) == 2  # int(4 * 0.5) steps of the schedule
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    expected = np.asarray(pipe.img2img(PROMPT, picture, 0.5, steps=4, seed=1, progress=False))
    np.testing.assert_array_equal(decode_png(steps[-1]["latents"]), expected)


BAD_RUNS = {
    "no prompt": ({}, 400, "prompt is missing"),
    "prompt not text": ({"prompt": 12}, 400, "prompt must be a string"),
    "prompt too long": ({"prompt": "a" * 501}, 400, "at most 500"),
    "negative prompt not text": ({"prompt": "a", "negative_prompt": ["x"]}, 400, "negative_prompt must be a string"),
    "no steps": ({"prompt": "a", "steps": 0}, 400, "steps must be an integer from 1 to 100"),
    "too many steps": ({"prompt": "a", "steps": 101}, 400, "steps must be an integer from 1 to 100"),
    "steps as text": ({"prompt": "a", "steps": "5"}, 400, "steps must be an integer"),
    "fractional steps": ({"prompt": "a", "steps": 2.5}, 400, "steps must be an integer"),
    "steps as boolean": ({"prompt": "a", "steps": True}, 400, "steps must be an integer"),
    "negative guidance": ({"prompt": "a", "guidance": -1}, 400, "guidance must be from 0.0 to 30.0"),
    "huge guidance": ({"prompt": "a", "guidance": 31}, 400, "guidance must be from 0.0 to 30.0"),
    "guidance as text": ({"prompt": "a", "guidance": "high"}, 400, "guidance must be a number"),
    "negative seed": ({"prompt": "a", "seed": -1}, 400, "seed must be an integer from 0"),
    "huge seed": ({"prompt": "a", "seed": 2**40}, 400, "seed must be an integer from 0"),
    "size off the grid": ({"prompt": "a", "width": 60}, 400, "width must be one of 32, 40, 48, 56, 64"),
    "size too large": ({"prompt": "a", "height": 1024}, 400, "height must be one of"),
    "unknown scheduler": ({"prompt": "a", "scheduler": "fast"}, 400, "scheduler must be one of pndm"),
    "scheduler this model cannot run": ({"prompt": "a", "scheduler": "lms"}, 400, "rescale_betas_zero_snr"),
    "too few steps for PNDM": ({"prompt": "a", "scheduler": "pndm", "steps": 3}, 400, "needs at least 4 steps"),
    "unknown field": ({"prompt": "a", "weights": "/etc/passwd"}, 400, "unknown field(s) weights"),
    "strength zero": (
        {"prompt": "a", "image": data_url(png_bytes()), "strength": 0},
        400,
        "strength must be in (0, 1]",
    ),
    "image not a data URL": ({"prompt": "a", "image": "/etc/passwd"}, 400, "image must be a picture as a data URL"),
    "image not base64": ({"prompt": "a", "image": "data:image/png;base64,@@@"}, 400, "not valid base64"),
    "image not a picture": ({"prompt": "a", "image": data_url(b"hello")}, 400, "not a PNG, JPEG or WebP"),
    "image a GIF": ({"prompt": "a", "image": data_url(png_bytes(format="GIF"), "gif")}, 400, "not a PNG, JPEG or WebP"),
    "image broken": ({"prompt": "a", "image": data_url(png_bytes()[:60])}, 400, "broken"),
    "image too many pixels": ({"prompt": "a", "image": data_url(png_bytes((5000, 4000)))}, 413, "5000x4000 pixels"),
    "image too many bytes": ({"prompt": "a", "image": data_url(bytes(5 * 2**20))}, 413, "over 4 MB"),
    "strength out of range": ({"prompt": "a", "image": data_url(png_bytes()), "strength": 1.5}, 400, "strength must"),
    "strength with no step": (
        {"prompt": "a", "image": data_url(png_bytes()), "strength": 0.04, "steps": 20},
        400,
        "leaves no denoising step",
    ),
}


@pytest.mark.parametrize("case", BAD_RUNS, ids=list(BAD_RUNS))
def test_bad_runs_are_refused_with_their_reason(server, case):
    body, status, message = BAD_RUNS[case]
    response = httpx.post(f"{server}/api/run", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


BAD_REQUESTS = {
    "run body not JSON": ("POST", "/api/run", b"prompt=a", 400, "must be JSON"),
    "run body not an object": ("POST", "/api/run", b"[1, 2]", 400, "must be a JSON object"),
    "run body too large": ("POST", "/api/run", b" " * (8 * 2**20 + 1), 413, "over 8 MB"),
    "run body not UTF-8": ("POST", "/api/run", b"\xff\xfe{", 400, "must be JSON"),
    "run body nested too deep": ("POST", "/api/run", b"[" * 100_000, 400, "must be JSON"),
    "run body with a 5000-digit number": ("POST", "/api/run", b'{"seed": ' + b"9" * 5000 + b"}", 400, "must be JSON"),
    "tokens without prompt": ("POST", "/api/tokens", b"{}", 400, "prompt is missing"),
    "tokens prompt too long": ("POST", "/api/tokens", json.dumps({"prompt": "a" * 501}).encode(), 400, "at most 500"),
    "run by GET": ("GET", "/api/run", None, 405, "Method Not Allowed"),
    "model by POST": ("POST", "/api/model", b"{}", 405, "Method Not Allowed"),
    "unknown page": ("GET", "/weights", None, 404, "Not Found"),
    "a file outside static": ("GET", "/static/../server.py", None, 404, "Not Found"),
    "an encoded path outside static": ("GET", "/static/..%2fserver.py", None, 404, "Not Found"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_and_a_message(server, case):
    method, path, body, status, message = BAD_REQUESTS[case]
    response = httpx.request(method, f"{server}{path}", content=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and "Traceback" not in response.text


def first_step_then_leave(server, body):
    """Start a run, read up to its first step, and close the connection."""
    with httpx.stream("POST", f"{server}/api/run", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "step":
                return


def computing(runner, steps):
    """Whether the runner computes a run of `steps` steps (not the end of an earlier test's run)."""
    run = runner.running
    return run is not None and run.options.steps == steps


def wait_until(condition, timeout=20):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_client_that_leaves_cancels_its_run(server, app):
    runner = app.state.runner
    first_step_then_leave(server, {"prompt": PROMPT, "steps": 100})
    started = time.monotonic()
    wait_until(lambda: runner.running is None)  # stopped at the next step, not after 100
    assert time.monotonic() - started < 10
    status, events = run_events_over_http(server, {"prompt": PROMPT, "steps": 2})
    assert status == 200 and events[-1]["type"] == "done"


def test_a_client_that_leaves_the_line_frees_its_place(server, app):
    """A waiting run whose client goes away leaves the queue at once, not when its turn comes."""
    runner = app.state.runner
    first = threading.Thread(target=run_events_over_http, args=(server, {"prompt": PROMPT, "steps": 40}))
    first.start()
    wait_until(lambda: computing(runner, steps=40))
    with httpx.stream("POST", f"{server}/api/run", json={"prompt": PROMPT, "steps": 2}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:]) == {"type": "queued", "position": 1}
                break
    wait_until(lambda: not runner.waiting, timeout=5)
    assert computing(runner, steps=40)  # the first run still computing
    first.join(120)


def test_runs_wait_in_line_with_their_position_and_a_full_line_is_refused(server, app):
    """One run computes at a time; the next wait with their place shown (3 may wait here); more get a 429."""
    runner = app.state.runner
    results = {}

    def client(name, steps):
        results[name] = run_events_over_http(server, {"prompt": PROMPT, "steps": steps, "seed": name})

    first = threading.Thread(target=client, args=(0, 60))
    first.start()
    wait_until(lambda: computing(runner, steps=60))
    waiting = [threading.Thread(target=client, args=(name, 2)) for name in (1, 2, 3)]
    for count, thread in enumerate(waiting, 1):
        thread.start()
        wait_until(lambda count=count: len(runner.waiting) == count)
    refused = httpx.post(f"{server}/api/run", json={"prompt": PROMPT}, timeout=30)
    assert refused.status_code == 429 and "runs are waiting already" in refused.json()["error"]
    for thread in [first, *waiting]:
        thread.join(120)
    assert results[0][0] == 200 and results[0][1][-1]["type"] == "done", results[0]
    for name in (1, 2, 3):
        status, events = results[name]
        assert status == 200 and events[-1]["type"] == "done"
        positions = [event["position"] for event in events if event["type"] == "queued"]
        assert positions and positions[0] == name, events  # runs ahead of it
        assert positions == sorted(positions, reverse=True)


def test_checks_refuse_what_the_page_cannot_send(pipe):
    """The request checks hold without a server too: an Options comes out only for good input."""
    prompt, options = checks.run_request({"prompt": "a", "steps": 3, "width": 48, "height": 32}, pipe)
    assert prompt == "a" and (options.steps, options.width, options.height, options.prompt_weights) == (
        3,
        48,
        32,
        False,
    )
    with pytest.raises(checks.BadRequest, match="guidance must be a number"):
        checks.run_request({"prompt": "a", "guidance": float("nan")}, pipe)


def test_minisd_explore_is_the_explorers_command_line(capsys):
    """`minisd explore` reaches the explorer's own options; it listens on this machine only by default."""
    with pytest.raises(SystemExit):
        cli.main(["explore", "--help"])
    assert "--weights" in capsys.readouterr().out
    assert server_main.parse_args([]).host == "127.0.0.1"
    assert cli.main(["explore", "--weights", "no/such/model"]) == 2
    assert "minisd explore: error: " in capsys.readouterr().err


def test_a_port_in_use_is_an_error_not_a_traceback(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert server_main.main(["--port", port]) == 2
    assert "minisd explore: error: " in capsys.readouterr().err


def test_an_sd15_configured_model_shows_the_same_views_with_every_scheduler():
    """tests/fixtures/tiny-sd is configured as SD 1.5 (ε-prediction, PNDM, guidance 7.5): x̂₀ is
    (x_t − √(1−ᾱ) ε) / √ᾱ, and every scheduler's run has every view, its noise level falling."""
    tiny = minisd.load(TINY_SD)
    scheduler, steps = watched_steps(tiny, steps=3)
    assert scheduler.config.prediction_type == "epsilon" and type(scheduler).__name__ == "PNDMScheduler"
    for step, call in steps:
        a = scheduler.alphas_cumprod[int(step.timestep)]
        x_t = call.sample[-1:]
        x0, noise = clean_and_noise(scheduler, step.index, step.count, x_t, step.noise_pred)
        np.testing.assert_allclose(x0, (x_t - np.sqrt(1 - a) * step.noise_pred) / np.sqrt(a), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(noise, step.noise_pred)
    for name in SCHEDULERS:
        prompt, options = checks.run_request({"prompt": PROMPT, "steps": 2, "scheduler": name}, tiny)
        events = list(run_events(tiny, prompt, options))[1:]
        assert len(events) == 2 * options.steps - 1 if name == "heun" else options.steps
        for event in events:
            assert set(event) >= {"latents", "x0", "noise", "channels", "guidance", "attention", "noise_level"}
        levels = [event["noise_level"] for event in events]
        assert levels == sorted(levels, reverse=True) and 0 < levels[-1] < levels[0] <= 1, (name, levels)


def test_without_the_explore_extra_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minisd.explore.server", None)  # as if starlette were not installed
    assert cli.main(["explore"]) == 2
    assert "pip install 'minisd[explore]'" in capsys.readouterr().err
