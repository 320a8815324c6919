"""A test-only LiteLLM callback: what the proxy books per request, and how long its event loop
stalls around each map swap. Never load it in a real proxy.

Load it next to config.yaml (``litellm_settings.callbacks: ["spend_probe.handler", ...]``) with
``SPEND_PROBE_FILE`` set. It appends JSON lines to that file:

- ``{"kind": "spend", "call_id", "model", "cost", "prompt", "completion", "stream"}`` for each
  success the proxy logs (the spend passed to the success hook);
- ``{"kind": "swap", "t", "stall"}`` each time ``litellm.model_cost`` is another object: ``stall``
  is the longest the loop went without running this probe's 5 ms ticker in the 0.5 s before;
- ``{"kind": "window", "stall", "swap"}`` every 0.5 s: the longest stall of the window and
  whether a swap happened in it (the windows without one are the baseline under the same load);
- ``{"kind": "stall", "t", "stall"}`` each tick late by more than 20 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import deque
from typing import Any, Final

import litellm
from litellm.integrations.custom_logger import CustomLogger

TICK: Final = 0.005
WINDOW: Final = 0.5
_lock: Final = threading.Lock()


def _write(record: dict[str, Any]) -> None:
    path: Final = os.environ.get("SPEND_PROBE_FILE")
    if not path:
        return
    line: Final = json.dumps(record, default=str) + "\n"
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(line)


class SpendProbe(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        try:
            asyncio.get_running_loop().create_task(self._watch_loop())
        except RuntimeError:
            pass

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        try:
            logged: Final = kwargs.get("standard_logging_object") or {}
            _write(
                {
                    "kind": "spend",
                    "call_id": kwargs.get("litellm_call_id"),
                    "model": logged.get("model_group") or kwargs.get("model"),
                    "cost": kwargs.get("response_cost"),
                    "logged_cost": logged.get("response_cost"),
                    "prompt": logged.get("prompt_tokens"),
                    "completion": logged.get("completion_tokens"),
                    "stream": bool(kwargs.get("stream")),
                }
            )
        except Exception as err:  # noqa: BLE001 - a probe never breaks the proxy
            _write({"kind": "error", "error": repr(err)})

    async def _watch_loop(self) -> None:
        ticks: deque[tuple[float, float]] = deque()
        seen = id(litellm.model_cost)
        last = time.monotonic()
        window_end, window_stall, window_swap = last + WINDOW, 0.0, False
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            stall = now - last - TICK
            last = now
            ticks.append((now, stall))
            while ticks and ticks[0][0] < now - WINDOW:
                ticks.popleft()
            if stall > 0.02:
                _write({"kind": "stall", "t": time.time(), "stall": stall})
            window_stall = max(window_stall, stall)
            if id(litellm.model_cost) != seen:
                seen = id(litellm.model_cost)
                window_swap = True
                _write({"kind": "swap", "t": time.time(), "stall": max(s for _, s in ticks)})
            if now >= window_end:
                _write({"kind": "window", "stall": window_stall, "swap": window_swap})
                window_end, window_stall, window_swap = now + WINDOW, 0.0, False


handler: Final = SpendProbe()
