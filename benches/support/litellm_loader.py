"""Times LiteLLM's own loader, litellm.get_model_cost_map(url=URL), in-process, for
benches/loader.rs.

Usage: python litellm_loader.py URL RUNS MAP_FILE

LITELLM_MODEL_COST_MAP_URL must be URL (the bench sets it), so the load that `import litellm`
runs fetches from the same loopback source rather than the internet; the import, and that
first load (it also parses the bundled backup once, for the count its integrity check
compares with), are untimed. Then RUNS calls of get_model_cost_map(url=URL) are timed, each a
real fetch: the call refuses to fetch when LITELLM_LOCAL_MODEL_COST_MAP or
LITELLM_OFFLINE_MODE is "true", so both must be unset, and after every call the loader's own
source info must say "remote" with the git blob id of the fetched bytes. Last, for context,
RUNS timings each of the fetch alone as LiteLLM makes it (httpx.get(URL).content, a new
connection each time) and of the bare json.loads of MAP_FILE's bytes.

Prints one line to stdout: RESULT {json}.
"""

import importlib.metadata
import json
import os
import sys
import time

url, runs, map_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for forced_local in ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_OFFLINE_MODE"):
    if os.environ.get(forced_local, "").strip().lower() == "true":
        sys.exit(f"{forced_local}=true: get_model_cost_map would not fetch")
if os.environ.get("LITELLM_MODEL_COST_MAP_URL") != url:
    sys.exit("LITELLM_MODEL_COST_MAP_URL must be the URL timed, so that the import fetches it too")

started = time.perf_counter()
import httpx  # noqa: E402
import litellm  # noqa: E402
from litellm.litellm_core_utils import get_model_cost_map as loader  # noqa: E402

import_seconds = time.perf_counter() - started

RESERVED = {"sample_spec", "fallback_generalizations"}


def models(model_cost: dict) -> int:
    return sum(1 for key in model_cost if key not in RESERVED)


def from_remote() -> dict:
    info = loader.get_model_cost_map_source_info()
    if info["source"] != "remote" or info["url"] != url:
        sys.exit(f"get_model_cost_map did not load {url}: {info}")
    return info


from_remote()  # the import's own load
times_ms = []
model_counts = set()
revisions = set()
for _ in range(runs):
    started = time.perf_counter()
    model_cost = litellm.get_model_cost_map(url=url)
    times_ms.append((time.perf_counter() - started) * 1000.0)
    revisions.add(from_remote()["source_revision"])
    model_counts.add(models(model_cost))
    del model_cost

httpx_get_ms = []
for _ in range(runs):
    started = time.perf_counter()
    fetched = httpx.get(url).content
    httpx_get_ms.append((time.perf_counter() - started) * 1000.0)
    del fetched

body = open(map_file, "rb").read()
json_loads_ms = []
for _ in range(runs):
    started = time.perf_counter()
    parsed = json.loads(body)
    json_loads_ms.append((time.perf_counter() - started) * 1000.0)
    del parsed

result = {
    "litellm": importlib.metadata.version("litellm"),
    "python": sys.version.split()[0],
    "import_seconds": import_seconds,
    "times_ms": times_ms,
    "models": sorted(model_counts),
    "source_revisions": sorted(revisions),
    "httpx_get_ms": httpx_get_ms,
    "json_loads_ms": json_loads_ms,
}
print("RESULT " + json.dumps(result), flush=True)
