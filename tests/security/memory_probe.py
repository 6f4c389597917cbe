"""Run the bombs under an address-space cap and report each outcome and the peak memory.

Run by ``test_memory.py`` in a fresh process, so the cap and the peak are this run's
alone. Prints one JSON object: ``{"outcomes": {case: "error: ..." | "loaded"}, "peak_mb": N}``.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HEADROOM = 1 << 30  # bytes of address space beyond what importing torch took


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def _cap_address_space() -> None:
    limit = _status_kb("VmPeak:") * 1024 + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _cases(root: Path) -> dict:
    from tests.security.conftest import (
        RECIPES,
        apply_recipe,
        build_model,
        make_task,
        recipe_for,
        save_artifact,
    )

    task = make_task()

    def artifact(name: str) -> Path:
        recipe = recipe_for(RECIPES[name])
        return save_artifact(
            apply_recipe(recipe, task=task, model=build_model()), recipe, root / name, task=task
        )

    sources = {
        name: artifact(name) for name in ("asym3_bitmap", "csr_fp32", "bsr_fp32", "ellpack_fp32")
    }

    def layout_edit(source, name, key, value, where=None):
        def mutate(tensors, layout):
            (layout[name] if where is None else layout[name][where])[key] = value

        return sources[source], mutate

    return {
        "levels 20000x20000": layout_edit("asym3_bitmap", "4.weight", "shape", [20000, 20000]),
        "levels 100000x100000": layout_edit("asym3_bitmap", "4.weight", "shape", [100000, 100000]),
        "nnz 10^12": layout_edit("asym3_bitmap", "4.weight", "nnz", 10**12),
        "sparse meta 100000x100000": layout_edit(
            "csr_fp32", "4.weight", "shape", [100000, 100000], "meta"
        ),
        "stored 10^12": layout_edit("csr_fp32", "4.weight", "stored", 10**12, "meta"),
        "bsr block 100000": layout_edit("bsr_fp32", "4.weight", "block", [100000, 100000], "meta"),
        "ellpack width 10^9": layout_edit("ellpack_fp32", "4.weight", "width", 10**9, "meta"),
        "indptr 60000": (
            sources["csr_fp32"],
            lambda t, lay: t.update(
                {
                    "4.weight::indptr": t["4.weight::indptr"]
                    .clone()
                    .fill_(torch.iinfo(t["4.weight::indptr"].dtype).max)
                }
            ),
        ),
    }


def _yaml_bombs(root: Path) -> dict:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(9)
    )
    entry = "{entry: 'autoslim.tasks.digits:make_task', params: {width: 4, junk: *i}}"
    bombs = {
        "alias bomb in task params": laughs + f"task: {entry}\nstages: []\n",
        "a 2 MB recipe": "task: {entry: 'autoslim.tasks.digits:make_task'}\nextra: {"
        + ", ".join(f"k{i}: 1" for i in range(250_000))
        + "}\n",
    }
    paths = {}
    for name, text in bombs.items():
        paths[name] = root / f"{len(paths)}.yaml"
        paths[name].write_text(text)
    return paths


def main() -> int:
    import torch  # noqa: F401  (imported before the cap: its own address space is not the bomb)

    import autoslim
    from autoslim.errors import AutoslimError
    from autoslim.recipe import Recipe
    from autoslim.task import task_fingerprint
    from tests.security.conftest import ENTRY, make_task
    from tests.security.tamper import tampered_copy

    autoslim.register_task(ENTRY, make_task)
    root = Path(tempfile.mkdtemp())
    cases, bombs = _cases(root), _yaml_bombs(root)
    _cap_address_space()
    outcomes = {}
    for index, (name, (source, mutate)) in enumerate(cases.items()):
        try:
            autoslim.load(tampered_copy(source, root / f"t{index}", mutate))
            outcomes[name] = "loaded"
        except AutoslimError as exc:
            outcomes[name] = f"error: {exc}"
    for name, path in bombs.items():
        try:
            task_fingerprint(Recipe.load(path).task)
            outcomes[name] = "loaded"
        except AutoslimError as exc:
            outcomes[name] = f"error: {exc}"
    shutil.rmtree(root, ignore_errors=True)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and
    # exec, so it would report the test runner's own peak.
    peak_mb = _status_kb("VmHWM:") / 1024
    print(json.dumps({"outcomes": outcomes, "peak_mb": round(peak_mb, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
