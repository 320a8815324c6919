"""Prices one model with the real litellm library, which loads its map from
LITELLM_MODEL_COST_MAP_URL at import, and reports where the map came from.

Usage: python price.py MODEL. Prints one JSON object; exit 1 when the model has no price.
"""

import json
import sys

import litellm
from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info

model = sys.argv[1]
source = get_model_cost_map_source_info()
try:
    prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=1000, completion_tokens=1000)
except Exception as error:  # litellm raises when the model is not in its map
    print(json.dumps({"error": str(error), "source": source}, default=str))
    sys.exit(1)
print(json.dumps({"prompt": prompt, "completion": completion, "source": source}, default=str))
