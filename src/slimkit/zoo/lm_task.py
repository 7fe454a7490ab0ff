"""Perplexity of a causal language model on held-out English, and how far its predictions moved (KL).

The default task of every causal LM slimkit loads (`builtin:smollm2`, a Hugging Face `*ForCausalLM`
folder). Text: the embedded English corpus (`slimkit.zoo.corpus`, CPython's documentation prose) in
its two disjoint parts: the held-out "eval" part (512 sentences) is only ever scored, never used for
calibration or selection; calibration windows come from the "calib" part only.

- **Perplexity**, sliding window: the held-out sentences, in corpus order and joined by newlines, are
  tokenized once into one stream, cut to its first `max_tokens` tokens. Windows of `window` tokens
  start every `stride` tokens; each window scores only the tokens the previous window did not reach,
  so every token but the first is predicted exactly once, with at least `window - stride` tokens of
  context (except in the first window). Perplexity = exp(mean negative log-likelihood).
- **KL**: the mean, over the first `kl_tokens` scored positions, of KL(p_original || p_model) of the
  next-token distributions, in nats. The original's log-probabilities are computed once per task.
- **Score** (what budgets and searches compare): original perplexity / this perplexity, so the
  original scores 1.0 and 0.995 means +0.5% perplexity.

>>> task = lm_task("path/to/llama-folder")                          # doctest: +SKIP
>>> task.metrics(model)                                             # doctest: +SKIP
{'ppl_ratio': 0.9981, 'perplexity': 17.42, 'kl': 0.0031}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch, Task
from slimkit.zoo.corpus import sentences as embedded
from slimkit.zoo.corpus import split
from slimkit.zoo.embedding_task import TOKENIZER_FILES, _eval_mode, _load_tokenizer
from slimkit.zoo.hf import check_folder, load_hf_folder, quiet
from slimkit.zoo.token_task import ByteTokenizer, folder_config, max_positions

WINDOW = 512          # tokens per scoring window (or the model's position limit, if lower)
STRIDE = 384          # a new window every 384 tokens: >= 128 tokens of context for every scored token
MAX_TOKENS = 4096     # held-out tokens scored (about 160 sentences of the 512 for a 49k-token vocabulary)
KL_TOKENS = 1024      # positions whose next-token distributions are compared with the original's
CALIB_LEN = 128       # tokens per calibration / example sequence
CALIB_BATCH = 8
EXAMPLE_LEN = 16      # tokens per example input (latency)
SCORE_BATCH = 4       # windows per forward pass


@dataclass
class LMPass:
    """What one pass over the held-out stream measured."""

    nll: float                            # summed negative log-likelihood (nats)
    count: int                            # predicted tokens
    kl: float | None = None               # summed KL to the reference over the KL positions
    kl_count: int = 0
    logprobs: torch.Tensor | None = None  # (kl positions, vocab) log-probabilities, kept for the reference

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(1, self.count))


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) of each sliding window over `n` tokens: every target in 1..n-1
    is scored once, by the first window that reaches it.

    >>> windows(10, 4, 3)
    [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    """
    if window < 2 or not 1 <= stride < window:
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    out, reached, begin = [], 1, 0
    while reached < n:
        end = min(begin + window, n)
        first = max(reached, begin + 1)
        if first < end:
            out.append((begin, end, first))
        reached, begin = end, begin + stride
    return out


def _shape(w: tuple[int, int, int]) -> tuple[int, int]:
    return w[1] - w[0], w[1] - w[2]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold equal tensors under the same names (the same model, loaded twice)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class CausalLMTask(Task):
    """Perplexity on held-out English, KL to the original, score = original ppl / ppl (module doc).

    `__init__` only stores its arguments; the tokenizer, the token streams and the original's
    measurements are made on first use and kept (`tokenizer_`, `eval_ids_`, `reference_`).

    >>> task = CausalLMTask(tokenizer, load_original, calib_sentences, eval_sentences)   # doctest: +SKIP
    >>> task.score(compressed)                                                            # doctest: +SKIP
    0.9987
    """

    score_name = "ppl_ratio"

    def __init__(self, tokenizer: Callable[[], Any], reference: Callable[[], nn.Module],
                 calib_sentences: list[str], eval_sentences: list[str], name: str = "causal-lm",
                 window: int = WINDOW, stride: int = STRIDE, max_tokens: int = MAX_TOKENS,
                 kl_tokens: int = KL_TOKENS, positions: int | None = None) -> None:
        if not calib_sentences or not eval_sentences:
            raise ValueError("CausalLMTask needs at least one calibration and one evaluation sentence")
        self.tokenizer = tokenizer
        self.reference = reference
        self.calib_sentences = list(calib_sentences)
        self.eval_sentences = list(eval_sentences)
        self.name = name
        self.window, self.stride, self.max_tokens, self.kl_tokens = window, stride, max_tokens, kl_tokens
        self.positions = positions   # the model's position limit: windows and sequences are cut to it
        self.tokenizer_: Any = None
        self.eval_ids_: torch.Tensor | None = None
        self.calib_ids_: torch.Tensor | None = None
        self.reference_: LMPass | None = None

    # ------------------------------------------------------------ text

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of `text` (no special tokens), 1-D int64."""
        if self.tokenizer_ is None:
            self.tokenizer_ = self.tokenizer()
        tok = self.tokenizer_
        if isinstance(tok, ByteTokenizer):
            return torch.tensor(tok.text_ids(text), dtype=torch.long)
        with quiet():   # "longer than the model's maximum length": windows cut it
            ids = tok(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def eval_ids(self) -> torch.Tensor:
        """The held-out stream: evaluation sentences in corpus order, newline-joined, first `max_tokens`."""
        if self.eval_ids_ is None:
            ids = self.encode("\n".join(self.eval_sentences))[: self.max_tokens]
            if ids.numel() < 2:
                raise SlimError(f"{self.name}: the held-out text has fewer than 2 tokens")
            self.eval_ids_ = ids
        return self.eval_ids_

    def calib_ids(self) -> torch.Tensor:
        if self.calib_ids_ is None:
            self.calib_ids_ = self.encode("\n".join(self.calib_sentences))
        return self.calib_ids_

    def _sequences(self, count: int, length: int) -> torch.Tensor:
        """`count` calibration sequences of `length` tokens, cut one after the other from the calib stream."""
        ids = self.calib_ids()
        if ids.numel() < length:
            ids = ids.repeat(length // max(1, ids.numel()) + 1)
        per = max(1, ids.numel() // length)
        rows = [ids[(i % per) * length:(i % per + 1) * length] for i in range(count)]
        return torch.stack(rows)

    def _length(self, length: int) -> int:
        return min(length, self.positions) if self.positions else length

    # ------------------------------------------------------------ Task

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model on a batch, without a KV cache (a non-tensor argument: always the torch runtime)."""
        return model(**batch, use_cache=False)

    def example_inputs(self, batch_size: int) -> Batch:
        """`batch_size` calibration sequences of 16 tokens."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self._sequences(batch_size, self._length(EXAMPLE_LEN))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def calibration(self, n: int = 256) -> list[Batch]:
        """`n` sequences of 128 tokens from the calibration text (never the held-out text), batches of 8."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ids = self._sequences(n, self._length(CALIB_LEN))
        return [{"input_ids": ids[i:i + CALIB_BATCH], "attention_mask": torch.ones_like(ids[i:i + CALIB_BATCH])}
                for i in range(0, n, CALIB_BATCH)]

    def score(self, model: nn.Module) -> float:
        """Original perplexity / the model's perplexity on the held-out text (1.0 for the original)."""
        return self.metrics(model)[self.score_name]

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """`ppl_ratio` (the score), `perplexity` and `kl` (mean nats per position), from one pass."""
        if self.reference_ is None and self._reference_from(model):
            mine = self.reference_   # the original itself, measured as the reference just now
        else:
            mine = self.run(model, self.reference_pass())
        reference = self.reference_pass()
        kl = 0.0 if mine is reference else (mine.kl or 0.0) / max(1, mine.kl_count)
        ppl = mine.perplexity
        ratio = reference.perplexity / ppl if math.isfinite(ppl) and ppl > 0 else 0.0
        return {self.score_name: ratio, "perplexity": ppl, "kl": kl}

    # ------------------------------------------------------------ passes

    def reference_pass(self) -> LMPass:
        """The original model's pass: its perplexity and the log-probabilities of the KL positions (kept)."""
        if self.reference_ is None:
            self._reference_from(None)
        if self.reference_ is None:
            raise RuntimeError("the original model's pass could not be computed")
        return self.reference_

    def _reference_from(self, candidate: nn.Module | None) -> bool:
        """Measure the original; when `candidate` holds the original's weights (the model `compress`
        measures first) its pass is the reference, so the original is not run twice. Returns whether
        it was the candidate's."""
        original = self.reference()
        same = candidate is not None and same_weights(original, candidate)
        model = candidate if same else original
        del original
        self.reference_ = self.run(model, None)
        return same

    def run(self, model: nn.Module, reference: LMPass | None) -> LMPass:
        """One pass over the held-out stream: summed NLL and, against `reference`, summed KL; without a
        reference the log-probabilities of the KL positions are kept (this is the reference)."""
        ids = self.eval_ids()
        window = self._length(self.window)
        stride = min(self.stride, window - 1) if window > 1 else 1
        plan = windows(ids.numel(), window, stride)
        runs: list[list[tuple[int, int, int]]] = []   # consecutive windows of one shape, in stream order
        for w in plan:
            if runs and len(runs[-1]) < SCORE_BATCH and _shape(runs[-1][0]) == _shape(w):
                runs[-1].append(w)
            else:
                runs.append([w])
        device = _device(model)
        out = LMPass(0.0, 0, 0.0 if reference is not None else None)
        kept: list[torch.Tensor] = []
        with torch.inference_mode(), _eval_mode(model):
            for chunk in runs:
                inputs = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)
                targets = torch.stack([ids[f:e] for _, e, f in chunk]).to(device)
                logits = self._logits(model, inputs, targets.shape[1])
                logp = F.log_softmax(logits.float(), dim=-1)
                out.nll -= float(logp.gather(-1, targets.unsqueeze(-1)).sum())
                out.count += targets.numel()
                self._kl(logp.reshape(-1, logp.shape[-1]), reference, out, kept)
        if reference is None:
            out.logprobs = torch.cat(kept) if kept else torch.empty(0)
        if not math.isfinite(out.nll):
            out.nll = math.inf
        return out

    def _logits(self, model: nn.Module, inputs: torch.Tensor, scored: int) -> torch.Tensor:
        """Logits predicting the last `scored` tokens of each window: (batch, scored, vocab)."""
        try:
            output = model(input_ids=inputs, use_cache=False, logits_to_keep=scored + 1)
        except TypeError:   # a forward without logits_to_keep
            output = model(input_ids=inputs, use_cache=False)
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise SlimError(f"{self.name}: the model returns no next-token logits (is it a *ForCausalLM?)")
        return logits[:, -(scored + 1):-1]

    def _kl(self, logp: torch.Tensor, reference: LMPass | None, out: LMPass, kept: list[torch.Tensor]) -> None:
        """Keep (reference pass) or compare with the reference (other passes) the first KL positions."""
        done = out.kl_count
        take = min(logp.shape[0], self.kl_tokens - done)
        if take <= 0:
            return
        mine = logp[:take]
        if reference is None:
            kept.append(mine.cpu().clone())
        else:
            ref = reference.logprobs[done:done + take].to(mine.device)
            if ref.shape != mine.shape:
                raise SlimError(f"{self.name}: the model's vocabulary ({mine.shape[-1]}) differs from the "
                                f"original's ({ref.shape[-1]})")
            kl = (ref.exp() * (ref - mine)).sum(-1).clamp_min(0.0)
            out.kl = (out.kl or 0.0) + float(kl.sum())
        out.kl_count += take


# ------------------------------------------------------------ factories


def held_out(text: list[str]) -> tuple[list[str], list[str]]:
    """(calibration sentences, held-out sentences in corpus order): the disjoint parts of `text`."""
    order = {s: i for i, s in reversed(list(enumerate(text)))}
    calib, evaluation = split(text, "calib"), sorted(split(text, "eval"), key=order.__getitem__)
    if not calib or not evaluation:
        raise SlimError(f"need at least 2 distinct sentences to score a language model, got {len(set(text))}")
    return calib, evaluation


def lm_task(path: str | Path, sentences: list[str] | None = None, **options: Any) -> CausalLMTask:
    """The perplexity task of a causal LM folder: its own tokenizer, or byte-level ids when it has none.

    `sentences` default to the embedded corpus; `options` are `CausalLMTask`'s (window, stride,
    max_tokens, kl_tokens).

    >>> task = lm_task("path/to/gpt2-folder")                          # doctest: +SKIP
    """
    folder = check_folder(path)
    calib, evaluation = held_out(list(sentences) if sentences is not None else embedded())
    config = folder_config(folder)
    if any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        def tokenizer() -> Any:
            return _load_tokenizer(folder)
    else:
        def tokenizer() -> Any:
            return ByteTokenizer.from_config(config)
    options.setdefault("positions", max_positions(config))
    return CausalLMTask(tokenizer, lambda: load_hf_folder(folder), calib, evaluation, name=folder.name, **options)
