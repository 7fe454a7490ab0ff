"""slimkit.pruning: pruning (weight sparsity, activation sparsity, structured removal, N:M).

Methods (configs in `slimkit.pruning.api`, applied with `sk.prune_(model, config, data=task)`):

- `magnitude`   MagnitudePruning: unstructured, layer or global threshold; one-shot, iterative
                (Han et al. 2015) or gradual (Zhu & Gupta 2017) with fine-tuning, masks held.
- `nm`          NMPruning: N:M semi-structured sparsity (2:4).
- `apoz`        APoZPruning: Network Trimming (Hu et al. 2016), physically smaller layers.
- `weight-norm` NormPruning: L1/L2 filter / neuron norms (Li et al. 2017), physically smaller.
- `wanda`       WandaConfig: |w| x input norm per output row (Sun et al. 2023), 50% or 2:4, one shot.
- `sparsegpt`   SparseGPTConfig: OBS-style pruning with error compensation (Frantar & Alistarh 2023).
- `structured`  StructuredPruning: FFN neurons and attention heads of BERT-style blocks (MiniLM),
                or neurons / filters elsewhere, by activation; output projections refitted.

Layout: `masks`, `schedules`, `importance` are pure tensor math; `unstructured`, `structured`,
`transformer` walk modules (cutting through `slimkit.surgery.shrink` / `trace`); `finetune`
is the shared retraining loop. Sparse weights are stored by the `sparse` codec
(`slimkit.io.codec_sparse`).
"""

from slimkit.pruning import (
    calibrated_stream,  # noqa: F401  (registers wanda / sparsegpt streaming)
    estimate,  # noqa: F401  (registers the size estimates)
    streaming,  # noqa: F401  (registers the streaming support)
)
from slimkit.pruning.calibrated import SparseGPTConfig, WandaConfig

__all__ = ["SparseGPTConfig", "WandaConfig"]
