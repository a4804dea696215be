"""Score LocalMaskerConfig(window_size=512) on a Gemma-3-270M recording of layers 0
(sliding, window 512) and 5 (full): ~0 error and density 1.0 on layer 0 only.

    python benchmark/gemma/window_check.py REC.safetensors
"""
import sys

from sah.attention import ResearchAttentionConfig
from sah.evaluate import evaluate_config
from sah.maskers import LocalMaskerConfig
from sah.recording.format import load_recording

rec = load_recording(sys.argv[1])
chain = ResearchAttentionConfig(masker_configs=[LocalMaskerConfig(window_size=512)])
print(f"{rec.model_id}: {rec.num_keys} keys, {rec.num_queries} queries, "
      f"tokenization {rec.metadata.get('tokenization')}")
for figures, index in zip(evaluate_config(chain, rec).layers, range(len(rec.layers))):
    print(f"layer {figures.layer} ({rec.layer_type(index).describe()}): LocalMaskerConfig("
          f"window_size=512) output_error {figures.output_error:.3g}, density {figures.density:.4f}")
