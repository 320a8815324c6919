"""costmap_reload: keeps a LiteLLM proxy's model cost map current, with no database and no restart.

Load it from the proxy's config, the file next to config.yaml::

    litellm_settings:
      callbacks: ["costmap_reload.handler"]

In the proxy process it asks ``LITELLM_MODEL_COST_MAP_URL`` every ``COSTMAP_POLL_SECONDS``
(default 10) whether the map changed (``If-None-Match``: an unchanged map is a 304 and costs
nothing). A new map is fetched once: the body of that answer is handed to LiteLLM's own loader
(``refetch_model_cost_map`` through its ``client`` argument), so LiteLLM's classification,
integrity validation and finalization run on it, in a worker thread (about 0.1 s of parsing for
LiteLLM's map, during which the proxy goes on serving). Only the swap runs on the event loop, as
``POST /reload/model_cost_map`` does it (``_swap_in_model_cost_map``, no await from there to the
loaded line): ``GET /model/cost_map/source`` then reports the new ``source_revision`` (LiteLLM's
loader records it as it finalizes, a moment before the swap).

The swap is atomic for the prices a deployment sets itself. LiteLLM's swap assigns
``litellm.model_cost`` first and re-applies the deployments' ``model_info`` /
``litellm_params`` prices and the replayed ``register_model`` calls onto it afterwards, so a
cost computed meanwhile in another thread (LiteLLM prices streams and logs spend in worker
threads) could use the new map without them: the mapped model's price, or none for a model in
no map. So the entries LiteLLM will re-apply (its live routers' deployments, its replayed
registrations) are copied into the new map before the swap, and LiteLLM's own re-application
then rewrites them on it.

It never raises into the proxy, logs one line per new map and one per failure (a failure that
repeats is logged once, with the recovery), and stops with the process. On a LiteLLM whose
internals it does not know it says so once at start-up and does nothing.

The handler's ``str()`` (listed by the proxy's ``GET /active/callbacks``) is
``costmap_reload(poll=10s)`` when it polls and ``costmap_reload(inactive)`` when it does not:
that is how costmap-operator tells that a proxy without a database loads new maps by itself.

Only what the proxy already has is imported: the standard library, httpx and LiteLLM.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
from litellm.integrations.custom_logger import CustomLogger

POLL_SECONDS_ENV: Final = "COSTMAP_POLL_SECONDS"
DEFAULT_POLL_SECONDS: Final = 10.0
MIN_POLL_SECONDS: Final = 1.0
MAP_URL_ENV: Final = "LITELLM_MODEL_COST_MAP_URL"
# A poll is one small request; a map endpoint slower than this is treated as failing.
POLL_TIMEOUT_SECONDS: Final = 10.0

logger: Final = logging.getLogger("costmap_reload")


def _configure_logger() -> None:
    # LiteLLM's own loggers are quiet at INFO by default: the lines a user needs must show.
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s costmap_reload %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _Internals(NamedTuple):
    """The parts of LiteLLM the reload endpoint uses, found by name on this version.

    (A NamedTuple, not a dataclass: the proxy loads this file without registering it in
    sys.modules, which dataclasses need.)
    """

    refetch: Callable[..., Coroutine[Any, Any, Any]]
    unavailable: type
    swap_in: Callable[[dict[str, Any]], int]
    source_info: Callable[[], dict[str, Any]]
    proxy_config: Any
    # What LiteLLM re-applies after a swap: the live routers (their deployments' model_info)
    # and the register_model calls it replays. None on a version without them.
    live_routers: Any
    runtime_registrations: Mapping[str, Mapping[str, Any]] | None


def _find_internals() -> _Internals | str:
    """LiteLLM's loader and swap, or why this version is not one this module knows."""
    try:
        from litellm.litellm_core_utils import get_model_cost_map as loader
        from litellm.proxy import proxy_server
    except Exception as err:  # noqa: BLE001 - any import failure means "not a proxy we know"
        return f"cannot import LiteLLM's proxy ({type(err).__name__}: {err})"
    found: Final = {
        "refetch_model_cost_map": getattr(loader, "refetch_model_cost_map", None),
        "ModelCostMapReloadUnavailable": getattr(loader, "ModelCostMapReloadUnavailable", None),
        "_swap_in_model_cost_map": getattr(proxy_server, "_swap_in_model_cost_map", None),
        "get_model_cost_map_source_info": getattr(loader, "get_model_cost_map_source_info", None),
    }
    missing: Final = [name for name, value in found.items() if value is None]
    if missing:
        return "it has no " + ", ".join(missing)
    try:
        parameters = inspect.signature(found["refetch_model_cost_map"]).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        parameters = None
    if not parameters or "client" not in parameters:
        return "its refetch_model_cost_map takes no client"
    source_info = found["get_model_cost_map_source_info"]
    try:
        info = source_info()  # type: ignore[misc]
    except Exception as err:  # noqa: BLE001
        return f"get_model_cost_map_source_info failed ({type(err).__name__})"
    if not isinstance(info, dict) or "source_revision" not in info or "etag" not in info:
        return "its map source info has no source_revision or etag"
    try:
        from litellm import router, utils

        live_routers = getattr(router, "_live_routers", None)
        runtime_registrations = getattr(utils, "_runtime_registered_model_cost", None)
    except Exception:  # noqa: BLE001
        live_routers, runtime_registrations = None, None
    return _Internals(
        refetch=found["refetch_model_cost_map"],  # type: ignore[arg-type]
        unavailable=found["ModelCostMapReloadUnavailable"],  # type: ignore[arg-type]
        swap_in=found["_swap_in_model_cost_map"],  # type: ignore[arg-type]
        source_info=source_info,  # type: ignore[arg-type]
        proxy_config=getattr(proxy_server, "proxy_config", None),
        live_routers=live_routers,
        runtime_registrations=runtime_registrations if isinstance(runtime_registrations, dict) else None,
    )


def _poll_seconds() -> float | str:
    """COSTMAP_POLL_SECONDS, or why it is not usable."""
    raw: Final = os.environ.get(POLL_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_POLL_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        return f"{POLL_SECONDS_ENV}={raw!r} is not a number of seconds"
    if not seconds >= MIN_POLL_SECONDS:  # also refuses NaN
        return f"{POLL_SECONDS_ENV}={raw!r} is under {MIN_POLL_SECONDS:g}"
    return seconds


class CostmapReload(CustomLogger):
    """A LiteLLM callback that only polls the map: it hooks no request."""

    def __init__(self) -> None:
        super().__init__()
        _configure_logger()
        self.poll_seconds: float | None = None
        self._task: asyncio.Task[None] | None = None
        why_not: Final = self._start()
        if why_not is not None:
            logger.warning("does nothing: %s", why_not)

    def __str__(self) -> str:
        if self.poll_seconds is None:
            return "costmap_reload(inactive)"
        return f"costmap_reload(poll={self.poll_seconds:g}s)"

    __repr__ = __str__

    def _start(self) -> str | None:
        """Starts polling; returns why it cannot."""
        version: Final = _litellm_version()
        internals = _find_internals()
        if isinstance(internals, str):
            return f"litellm {version} is not a version this module knows: {internals}; reload with a restart"
        if os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "").lower() == "true":
            return "LITELLM_LOCAL_MODEL_COST_MAP=true: the proxy uses its bundled map"
        url: Final = os.environ.get(MAP_URL_ENV, "").strip()
        if not url:
            return f"{MAP_URL_ENV} is not set"
        seconds = _poll_seconds()
        if isinstance(seconds, str):
            return seconds
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return "no running event loop (is this the LiteLLM proxy?)"
        self.poll_seconds = seconds
        self._task = loop.create_task(_Poller(internals, url, seconds).run(), name="costmap_reload")
        logger.info("polling %s every %gs (litellm %s)", _redacted(url), seconds, version)
        if internals.live_routers is None or internals.runtime_registrations is None:
            logger.warning(
                "litellm %s has no _live_routers or _runtime_registered_model_cost: the deployments' "
                "own prices are not in the new map at the swap, LiteLLM re-applies them just after it",
                version,
            )
        return None


def _redacted(url: str) -> str:
    """The URL without user, password or query: those never reach a log line (the query of
    the operator's map-url carries the token that opens the map)."""
    parts: Final = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url
    host: Final = parts.hostname or ""
    netloc: Final = f"{host}:{parts.port}" if parts.port is not None else host
    query: Final = "redacted" if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def _litellm_version() -> str:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:  # noqa: BLE001
        return "(unknown version)"


class _Fetched:
    """The ``client`` LiteLLM's loader fetches through: it answers with the response the poll
    already has, so a new map is fetched once."""

    def __init__(self, response: httpx.Response) -> None:
        self.response: Final = response

    async def get(self, url: str, *, timeout: float | None = None) -> httpx.Response:
        return self.response


class _Poller:
    """The loop: a conditional GET every period, a reload on a new map."""

    def __init__(self, internals: _Internals, url: str, poll_seconds: float) -> None:
        self.internals: Final = internals
        self.url: Final = url
        self.shown_url: Final = _redacted(url)
        self.poll_seconds: Final = poll_seconds
        self.last_failure: str | None = None
        self.carry_failed = False

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=POLL_TIMEOUT_SECONDS, trust_env=False) as client:
            while True:
                await asyncio.sleep(self.poll_seconds)
                try:
                    await self._poll_once(client)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - never raise into the proxy
                    self._failed(f"{type(err).__name__}: {err}")

    async def _poll_once(self, client: httpx.AsyncClient) -> None:
        headers: Final[dict[str, str]] = {}
        etag = self.internals.source_info().get("etag")
        if etag:
            headers["If-None-Match"] = etag
        response: Final = await client.get(self.url, headers=headers)
        if response.status_code == 304:
            self._recovered()
            return
        if response.status_code != 200:
            self._failed(f"{self.shown_url} answered HTTP {response.status_code}")
            return
        # Parse, validate and finalize in a worker thread: the proxy keeps serving meanwhile.
        result: Final = await asyncio.to_thread(self._prepare, response)
        if isinstance(result, self.internals.unavailable):
            self._failed(f"LiteLLM kept its map: {getattr(result, 'reason', result)}")
            return
        # The swap: on the event loop, nothing awaited from here to the loaded line.
        new_map: Final = result.model_cost_map
        models: Final = len(new_map)
        new_map.update(self._registered_entries(new_map))
        self.internals.swap_in(new_map)
        proxy_config: Final = self.internals.proxy_config
        if proxy_config is not None and hasattr(proxy_config, "model_cost_map_loaded_at"):
            from datetime import datetime, timezone

            proxy_config.model_cost_map_loaded_at = datetime.now(timezone.utc)
        revision: Final = self.internals.source_info().get("source_revision")
        self.last_failure = None
        logger.info("loaded map %s (%d models) from %s", revision, models, self.shown_url)

    def _registered_entries(self, new_map: dict[str, Any]) -> dict[str, Any]:
        """The entries LiteLLM re-applies after its swap (the deployments' own model_info, the
        replayed register_model calls), as they are now: put into the new map before the
        swap, so that no cost computed meanwhile (in a worker thread too) sees the new map
        without them. LiteLLM's re-application then rewrites them on the new map."""
        try:
            import litellm

            live: Final = litellm.model_cost
            entries: Final[dict[str, Any]] = {}
            for router in tuple(self.internals.live_routers or ()):
                for model_id in router.get_model_ids():
                    if model_id in live and model_id not in new_map:
                        entries[model_id] = copy.copy(live[model_id])
            for key, registered in dict(self.internals.runtime_registrations or {}).items():
                base = new_map.get(key, live.get(key))
                if isinstance(base, dict):
                    entry = copy.copy(base)
                    entry.update(registered)
                    entries[key] = entry
            return entries
        except Exception as err:  # noqa: BLE001 - then the swap is LiteLLM's alone
            if not self.carry_failed:
                logger.warning(
                    "could not carry the deployments' prices into the new map before the swap; "
                    "LiteLLM re-applies them just after it (%s: %s)",
                    type(err).__name__,
                    err,
                )
            self.carry_failed = True
            return {}

    def _prepare(self, response: httpx.Response) -> Any:
        """LiteLLM's loader on the body already fetched (in a worker thread, its own loop)."""
        loading: Final = self.internals.refetch(url=self.url, max_attempts=1, client=_Fetched(response))
        return asyncio.run(loading)

    def _failed(self, why: str) -> None:
        why = why.replace(self.url, self.shown_url)
        if why != self.last_failure:
            logger.warning("poll failed, the loaded map is kept: %s", why)
        self.last_failure = why

    def _recovered(self) -> None:
        if self.last_failure is not None:
            logger.info("polling works again; the loaded map is current")
            self.last_failure = None


handler: Final = CostmapReload()
