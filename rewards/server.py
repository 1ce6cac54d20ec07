"""A reward served over HTTP by a process of its own, and the client a run scores through, behind the reward's name.

Why: a reward whose dependencies clash with the trainer's (an original package pinning its own torch, a model too big
for the trainer's GPU) runs in its own environment or on another machine, and a run uses it exactly as it would the
in-process reward: same world, same name, same version (so the same run ids and records), same scores.

Server: `python -m bench serve --world WORLD --reward NAME [--host 127.0.0.1] [--port 8000]` loads the reward as the
world offers it and answers on the standard library's ThreadingHTTPServer: each connection is read in a thread of its
own, which gives up on a client silent for CONNECTION_TIMEOUT_S (a stalled client holds only its own thread), and
requests are scored one at a time (one model, one device, on the torch settings the server made):

    GET  /info   -> JSON {"world", "name", "version", "higher_is_better", "differentiable"} of the served reward
    POST /score  <- an .npz (numpy's archive, read with allow_pickle=False, so no request can run code) holding
                    `images`, float32 (B, C, H, W) in [0, 1], and `prompts`, a unicode array (B,)
                 -> JSON {"scores": [B floats]}, the float32 scores (a JSON number carries a float32 exactly)

A malformed request gets 400 (a body or an archive that would expand past MAX_REQUEST_BYTES, images of a shape the
world does not draw, non-finite images), a
reward that raises or scores a non-finite number 500, each with a one-line JSON {"error"}. The server scores on
one torch thread by default, as every cell of a sweep runs (bench/cell.py), so its scores are the in-process ones to
the last bit.

Client: `RemoteReward.connect(url)` reads /info (a server that does not answer is a one-line error naming how to start
one; a server of another world's reward, or of another reward, is refused before any run), then sends each call's
images in requests of at most `batch` images (fewer where they would pass MAX_REQUEST_BYTES). A request that cannot
connect, resets or times out is retried (`retries`, with doubling waits); an answered error is not (the same request
would fail again).
Scores come back without a graph: a served reward is never differentiable, so methods that need reward gradients
refuse it (bench/runner.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch

MAX_REQUEST_BYTES = 1 << 28
"""The largest request the server reads, as sent and as its archive expands (256 MiB: 64 float32 images of
512 x 512 x 3); the client splits a call into requests within it."""
CONNECTION_TIMEOUT_S = 30.0
"""How long the server waits on a client's request line, headers or body before closing its connection."""


def encode_request(images: torch.Tensor, prompts: list[str]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=images.detach().float().cpu().numpy(), prompts=np.array(prompts, dtype=str))
    return buffer.getvalue()


def decode_request(body: bytes, image_shapes: Collection[tuple[int, ...]]) -> tuple[torch.Tensor, list[str]]:
    """The images and prompts of a /score body, each image of one of `image_shapes` (C, H, W), the served world's;
    ValueError, naming what is wrong, for anything else."""
    try:  # what the archive's members expand to, before any is read (a few compressed bytes can be gigabytes)
        with zipfile.ZipFile(io.BytesIO(body)) as members:
            expanded = sum(member.file_size for member in members.infolist())
    except Exception as error:  # not a zip archive, or a table no reader takes (a forged version, a cut entry)
        raise ValueError(f"expected an .npz with `images` and `prompts` ({type(error).__name__}: {error})") from None
    if expanded > MAX_REQUEST_BYTES:
        raise ValueError(f"the request expands to {expanded} bytes, more than the {MAX_REQUEST_BYTES} a request may")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            images, prompts = archive["images"], archive["prompts"]
    except Exception as error:  # any way a damaged archive fails to read (a bad CRC, a cut stream, a bad header)
        raise ValueError(f"expected an .npz with `images` and `prompts` ({type(error).__name__}: {error})") from None
    if images.dtype != np.float32 or images.ndim != 4:
        raise ValueError(f"`images` must be float32 (B, C, H, W), got {images.dtype} {images.shape}")
    if images.shape[1:] not in image_shapes:
        valid = " or ".join("x".join(map(str, shape)) for shape in image_shapes)
        raise ValueError(f"`images` must be {valid} (C x H x W), as the served world draws them, got {images.shape}")
    if prompts.dtype.kind != "U" or prompts.shape != images.shape[:1]:
        raise ValueError(f"`prompts` must be {images.shape[0]} strings, got {prompts.dtype} {prompts.shape}")
    if not np.isfinite(images).all():
        raise ValueError("`images` must be finite: some are NaN or infinite")
    return torch.from_numpy(images), [str(prompt) for prompt in prompts]


def make_handler(reward, world: str, image_shapes: Collection[tuple[int, ...]]) -> type[BaseHTTPRequestHandler]:
    """The request handler serving `reward`, as world `world` offers it, on images of `image_shapes` (see the module
    docstring)."""
    info = {
        "world": world,
        "name": reward.name,
        "version": reward.version,
        "higher_is_better": reward.higher_is_better,
        "differentiable": False,
    }

    scoring = threading.Lock()  # requests are read side by side and scored one at a time
    threads = torch.get_num_threads()  # the server's setting: a handler's thread starts with the default

    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT_S

        def do_GET(self) -> None:
            if self.path != "/info":
                self._answer(404, {"error": f"no {self.path}; valid: GET /info, POST /score"})
                return
            self._answer(200, info)

        def do_POST(self) -> None:
            if self.path != "/score":
                self._answer(404, {"error": f"no {self.path}; valid: GET /info, POST /score"})
                return
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit() or not 0 < int(length) <= MAX_REQUEST_BYTES:
                self._answer(400, {"error": f"a body of 1 to {MAX_REQUEST_BYTES} bytes is needed, got {length[:20]!r}"})
                return
            try:
                images, prompts = decode_request(self.rfile.read(int(length)), image_shapes)
            except ValueError as error:
                self._answer(400, {"error": str(error)})
                return
            try:
                with scoring, torch.no_grad():
                    torch.set_num_threads(threads)
                    scores = reward(images, prompts).float().cpu()
            except Exception as error:  # the reward's failure goes back to the client, and the server goes on
                self._answer(500, {"error": f"{type(error).__name__}: {error}"})
                return
            if not torch.isfinite(scores).all():  # JSON has no NaN: a client would read what is not a score
                self._answer(
                    500,
                    {"error": f"{reward.name} scored {int((~torch.isfinite(scores)).sum())} image(s) NaN or infinite"},
                )
                return
            self._answer(200, {"scores": scores.tolist()})

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
            pass  # one line per request would drown the server's own output

    return Handler


class RemoteReward:
    """A reward scored by a server (see the module docstring); `world`, `name`, `version` and `higher_is_better` are
    the served reward's."""

    differentiable = False

    def __init__(self, url: str, info: dict, *, timeout: float, retries: int, batch: int):
        self.url = url.rstrip("/")
        self.name, self.version, self.higher_is_better = info["name"], info["version"], info["higher_is_better"]
        self.world = info.get("world", "?")
        self.timeout, self.retries, self.batch = timeout, retries, batch

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        expect: str | None = None,
        world: str | None = None,
        timeout: float = 600.0,
        retries: int = 3,
        batch: int = 64,
    ) -> RemoteReward:
        """The client of the server at `url`, which must serve the reward `expect` of world `world` (when given): the
        same name on another world is another reward (other networks, other scores)."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a reward server's address starts with http:// or https://, got {url!r}")
        probe = cls(
            url, {"name": "?", "version": "?", "higher_is_better": True}, timeout=timeout, retries=retries, batch=batch
        )
        info = json.loads(probe._request("/info", None))
        if expect is not None and info["name"] != expect:
            raise ValueError(f"the reward server at {url} serves {info['name']!r}, not {expect!r}")
        served = cls(url, info, timeout=timeout, retries=retries, batch=batch)
        if world is not None and served.world != world:
            raise ValueError(
                f"the reward server at {url} serves {served.name!r} of world {served.world!r}, not of world {world!r}: "
                f"start one with `python -m bench serve --world {world} --reward {served.name}`"
            )
        return served

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts: need one prompt per image")
        scores = []
        image_bytes = 4 * images[0].numel() + 4 * max((len(p) for p in prompts), default=0) if len(prompts) else 1
        batch = max(1, min(self.batch, MAX_REQUEST_BYTES // image_bytes))
        for start in range(0, len(prompts), batch):
            body = encode_request(images[start : start + batch], prompts[start : start + batch])
            scores += json.loads(self._request("/score", body))["scores"]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def _request(self, path: str, body: bytes | None) -> bytes:
        """The answer's body; retries what may pass (no connection, a reset, a timeout), not what the server refused."""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return answer.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")
                with contextlib.suppress(
                    ValueError, KeyError, TypeError
                ):  # the server's one-line reason, if it gave one
                    detail = json.loads(detail)["error"]
                raise ValueError(f"the reward server at {self.url} refused {path} ({error.code}): {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if attempt == self.retries:
                    reason = getattr(error, "reason", error)
                    raise ConnectionError(
                        f"no reward server answers at {self.url} ({reason}; {self.retries + 1} tries): start one with "
                        "`python -m bench serve --world WORLD --reward NAME --port PORT`"
                    ) from None
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def serve(
    load_reward: Callable[[], Any],
    world: str,
    image_shapes: Collection[tuple[int, ...]],
    host: str = "127.0.0.1",
    port: int = 8000,
    announce=print,
) -> None:
    """Serves the reward `load_reward` returns, as world `world` offers it on images of `image_shapes` (C, H, W),
    until interrupted; `announce` gets the line naming the address (port 0: a free one). The address is taken before
    the reward loads, so that a busy one fails at once (OSError)."""
    server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
    try:
        reward = load_reward()
        server.RequestHandlerClass = make_handler(reward, world, image_shapes)
        bound_host, bound_port = server.server_address[:2]
        announce(
            f"serving {reward.name} of world {world} (version {reward.version}) at http://{bound_host}:{bound_port}"
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
