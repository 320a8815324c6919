"""A test-only LiteLLM callback that breaks the map swap on purpose. Never load it in a real
proxy.

It replaces the proxy's ``_swap_in_model_cost_map`` by one that assigns ``litellm.model_cost``
to the new map stripped of every entry that is not in the catalog as fetched (so whatever a
caller put in for the deployments is gone), and re-applies the deployments' own prices
(``reapply_runtime_model_cost_registrations``) only ``NONATOMIC_SWAP_SECONDS`` later (default
0.2; ``never``: not at all, as a LiteLLM that loses them), on the event loop: requests priced
meanwhile see the new map without them. List it before ``costmap_reload.handler``, which looks
the swap up when it starts.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

import litellm
from litellm import utils
from litellm.integrations.custom_logger import CustomLogger
from litellm.litellm_core_utils.get_model_cost_map import GetModelCostMap
from litellm.proxy import proxy_server

PAUSE: Final = os.environ.get("NONATOMIC_SWAP_SECONDS", "0.2")


def _swap_in_later(new_model_cost_map: dict[str, Any]) -> int:
    catalog: Final = GetModelCostMap.loaded_model_cost_map()
    bare: Final = {key: entry for key, entry in new_model_cost_map.items() if key in catalog}
    litellm.model_cost = bare
    utils._invalidate_model_cost_lowercase_map()
    litellm.add_known_models(model_cost_map=bare)
    if PAUSE != "never":
        asyncio.get_running_loop().call_later(float(PAUSE), utils.reapply_runtime_model_cost_registrations)
    return len(bare)


proxy_server._swap_in_model_cost_map = _swap_in_later  # type: ignore[assignment]
handler: Final = CustomLogger()
