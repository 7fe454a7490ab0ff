"""Parameter sharing: k-means weight sharing, low-rank factorization, HashedNets.

>>> import slimkit as sk
>>> from slimkit.sharing import KMeansSharing, LowRank, Hashed
>>> sk.share_(model, KMeansConfig(bits=4, finetune_epochs=10), data=task)

Math lives in `kmeans`, `lowrank` and `hashing` (arrays in, arrays out); `apply_*` walk the
model; `api` holds the configs. Recipes: `kmeans`, `lowrank`, `hashed`, `deep-compression`.
"""

from slimkit.sharing import (
    apply_deep_kmeans,  # noqa: F401  (registers deep-kmeans)
    estimate,  # noqa: F401  (registers the size estimates)
    streaming,  # noqa: F401  (registers the streaming support)
)
from slimkit.sharing.api import (
    Hashed,
    HashedConfig,
    KMeansConfig,
    KMeansSharing,
    LowRank,
    LowRankConfig,
    ShareConfigError,
)
from slimkit.sharing.apply_deep_kmeans import DeepKMeansConfig

__all__ = ["DeepKMeansConfig", "HashedConfig", "KMeansConfig", "LowRankConfig", "ShareConfigError",
           "Hashed", "KMeansSharing", "LowRank"]   # names before the <Method>Config scheme
