"""Scale: calibration across processes and machines, and layer-sequential (block by block) drivers.

- `collectives`: `init()` joins torchrun's process group; all-reduce helpers that are no-ops
  without one; `shard()` hands each rank its share of the calibration batches.
- `blocks`: find a transformer's repeated blocks, cache the inputs of one block, run it, move on.

Nothing here is imported by `import slimkit`; the calibration code paths import it when they run.
"""
