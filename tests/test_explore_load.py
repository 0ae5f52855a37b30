"""The explorer under load: a real server in its own process (python -m minisd.explore) and 60
concurrent clients for 15 seconds, each sending a mix of good runs, runs it leaves after their
first event, bad requests, and quick reads. Nothing may crash: no 5xx, every bad request gets its
4xx, every good run ends with "done" or is cancelled by its client leaving, the server answers
and runs normally afterwards, and its peak memory (VmHWM) stays bounded; the test prints it.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

CLIENTS = 60
SECONDS = 15
PEAK_LIMIT_MB = 1500
GOOD_SCHEDULERS = ["ddim", "ddpm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"]
BAD_BODIES = [
    b"not json",
    b"[]",
    json.dumps({"prompt": 5}).encode(),
    json.dumps({"prompt": "a", "steps": 1000}).encode(),
    json.dumps({"prompt": "a", "guidance": -3}).encode(),
    json.dumps({"prompt": "a", "width": 1000}).encode(),
    json.dumps({"prompt": "a", "scheduler": "heun"}).encode(),  # this model's zero-SNR schedule refuses Heun
    json.dumps({"prompt": "a", "scheduler": "pndm", "steps": 2}).encode(),  # PNDM's warm-up needs 4 steps
    json.dumps({"prompt": "a", "image": "data:image/png;base64,AAAA"}).encode(),
    json.dumps({"prompt": "x" * 10_000}).encode(),
    json.dumps({"prompt": "a", "path": "/etc/passwd"}).encode(),
]


@pytest.fixture(scope="module")
def server():
    """python -m minisd.explore on a free port, with room for every client's run in its queue."""
    command = [sys.executable, "-m", "minisd.explore", "--port", "0", "--queue", str(CLIENTS + 10)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # "minisd explorer: http://127.0.0.1:PORT/ ..."
    assert line.startswith("minisd explorer: http://"), f"the server did not start: {line}{process.stderr.read()}"
    yield process, line.split()[2].rstrip("/")
    process.terminate()
    process.wait(timeout=30)


def peak_memory_mb(pid):
    """The process's peak resident memory (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def good_run(client, address, rng, leave_early):
    body = {
        "prompt": rng.choice(["a red circle", "a blue square on a white background", ""]),
        "steps": rng.randint(1, 3),
    }
    body.update(seed=rng.randint(0, 99), scheduler=rng.choice(GOOD_SCHEDULERS), guidance=rng.choice([1.0, 1.5, 7.5]))
    async with client.stream("POST", f"{address}/api/run", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            assert event["type"] != "error", event
            if leave_early:
                return "left"
            if event["type"] == "done":
                return "done"
    raise AssertionError("a run's stream ended without done")


async def bad_request(client, address, rng):
    response = await client.post(f"{address}/api/run", content=rng.choice(BAD_BODIES))
    assert 400 <= response.status_code < 500 and response.json()["error"], response.text
    return "refused"


async def quick_read(client, address, rng):
    if rng.random() < 0.5:
        response = await client.post(f"{address}/api/tokens", json={"prompt": "a green triangle"})
    else:
        response = await client.get(f"{address}/{rng.choice(['', 'api/model', 'static/app.js'])}")
    assert response.status_code == 200
    return "read"


async def client_loop(number, address, results, deadline):
    rng = random.Random(number)
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < deadline:
            choice = rng.random()
            try:
                if choice < 0.35:
                    result = await good_run(client, address, rng, leave_early=False)
                elif choice < 0.5:
                    result = await good_run(client, address, rng, leave_early=True)
                elif choice < 0.8:
                    result = await bad_request(client, address, rng)
                else:
                    result = await quick_read(client, address, rng)
            except asyncio.CancelledError:
                results["cancelled at the end"] += 1
                raise
            results[result] += 1


async def load(address):
    results = Counter()
    deadline = time.monotonic() + SECONDS
    tasks = [asyncio.create_task(client_loop(n, address, results, deadline)) for n in range(CLIENTS)]
    done, pending = await asyncio.wait(tasks, timeout=SECONDS + 5)
    for task in pending:  # runs still waiting in line: their clients leave, which cancels them
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a failed check in a client fails the test here
    return results


@pytest.mark.slow
def test_sixty_clients_for_fifteen_seconds(server):
    process, address = server
    results = asyncio.run(load(address))
    assert process.poll() is None, "the server died"
    assert results["done"] > 0 and results["refused"] > 0 and results["left"] > 0
    status = asyncio.run(after_the_load(address))
    peak = peak_memory_mb(process.pid)
    print(f"\nexplorer load test, {CLIENTS} clients for {SECONDS} s: {dict(results)}; server peak memory {peak:.0f} MB")
    assert status == "done"
    assert peak < PEAK_LIMIT_MB


async def after_the_load(address):
    """The line empties (left runs were cancelled) and a new run completes promptly."""
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.get(f"{address}/api/model")).status_code == 200
        started = time.monotonic()
        result = await good_run(client, address, random.Random(0), leave_early=False)
        assert time.monotonic() - started < 30, "the cancelled runs were computed anyway"
        return result


def test_the_server_refuses_a_bad_queue_size():
    command = [sys.executable, "-m", "minisd.explore", "--queue", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 2 and "--queue: must be an integer >= 1, got '0'" in result.stderr
