"""Measure one artifact: every objective, from the files on disk, in a fresh process.

A fresh process per measurement means the threads, allocator state and caches of the
search (which just trained a model) never leak into latency or memory numbers, and it is
the same code path as ``autoslim evaluate``. Run as a module it prints one JSON line.

The fresh process is forked from a measuring server: a process that has imported torch
and this module and done nothing else. It never trained, timed or allocated a model, so
its children start as clean as a new interpreter, without paying about 3 s of imports
per measurement (importing torch alone took 3.2 s on the 2-core box; most trials measure
in less). Where a process may not have children (a daemonic worker), or the server
breaks, a new interpreter runs the measurement instead.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from autoslim.artifact import artifact_bytes
from autoslim.data import call_model, first_tensor, to_device
from autoslim.errors import AutoslimError, TrialFailed
from autoslim.measure.latency import model_latency
from autoslim.recipe import Target

# Objectives an experiment may name, besides the task's own metric name.
OBJECTIVE_NAMES = ("size_bytes", "latency_ms", "peak_memory_bytes", "energy_mj")


def _warm_up_runtime(device: str) -> None:
    """Initialise thread pools and kernels so their one-off memory is not billed to the model."""
    x = torch.randn(8, 4, 8, 8, device=device)
    torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, device=device))
    torch.nn.functional.linear(x.flatten(1), torch.randn(4, 256, device=device))
    if device == "cpu":
        from autoslim.techniques.quantize._kernels import int8_engine_warm_up

        int8_engine_warm_up()


def measure_artifact(
    path: str | Path,
    target: Target,
    *,
    splits: tuple[str, ...] = ("val",),
    reference: str | Path | None = None,
) -> dict:
    """Load the artifact at ``path`` and measure it under ``target``.

    Returns ``{metric}`` (validation), ``test_{metric}`` if asked, ``size_bytes``,
    ``latency_ms`` (+ p10/p90), ``peak_memory_bytes``, ``energy_mj`` and ``energy_source``.
    With a ``reference`` artifact (the fp32 baseline), latency is timed in interleaved
    rounds against it (:mod:`autoslim.measure.paired`) and the values add the paired
    ``latency_ratio`` with its interval, rounds, ``latency_noisy`` and the reference's
    own median, ``reference_latency_ms``.
    """
    from autoslim.artifact import load_artifact
    from autoslim.deploy.runtimes import deployed_values, runtime_named
    from autoslim.measure.memory import peak_memory_bytes
    from autoslim.recipe import Recipe
    from autoslim.sparse.runtime import warm_crossovers
    from autoslim.task import load_task

    torch.set_num_threads(target.threads)
    recipe = Recipe.load(Path(path) / "recipe.yaml")
    task = load_task(recipe.task)
    runtime = runtime_named(target.runtime)
    batch = to_device(task.example_batch(target.batch_size), target.device)
    _warm_up_runtime(target.device)
    # Crossover timings allocate test matrices, and a runtime's own file is built once:
    # both before the peak window, which is loading and running what ships.
    warm_crossovers(load_artifact(path, task=task, runtime=False).model, target, example=batch)
    runtime.build(Path(path), task)
    runtime.warm_up()
    release_freed_memory()
    loaded: dict = {}

    def load_and_run() -> None:
        loaded["deployed"] = runtime.deploy(Path(path), task, target)
        with torch.inference_mode():
            call_model(loaded["deployed"].module, batch)

    peak = peak_memory_bytes(load_and_run, device=target.device)
    deployed = loaded["deployed"]
    model = deployed.module
    values = {"size_bytes": deployed.size_bytes, "peak_memory_bytes": peak}
    values |= deployed_values(deployed, recipe)
    if target.runtime != "torch":
        values["artifact_bytes"] = artifact_bytes(path)
    if reference is None:
        latency = model_latency(model, batch, warmup=target.warmup, repeats=target.repeats)
        values |= {
            "latency_ms": latency.median_ms,
            "latency_p10_ms": latency.p10_ms,
            "latency_p90_ms": latency.p90_ms,
        }
    else:
        values |= _paired_values(
            model, load_artifact(reference, task=task).model.to(target.device), batch, target
        )
    values |= _energy(model, path, task, batch, target)
    model.cpu()
    for split in splits:
        key = task.metric_name if split == "val" else f"{split}_{task.metric_name}"
        values[key] = task.evaluate(model, split)
    return values


def build_shipped_form(path: str | Path, target: Target) -> None:
    """Write the runtime's own file for the artifact here, before the measuring process
    starts: building it there would leave freed memory that the session then reuses,
    hiding most of its allocations from the peak."""
    from autoslim.deploy.runtimes import runtime_named
    from autoslim.recipe import Recipe
    from autoslim.task import load_task

    runtime = runtime_named(target.runtime)
    if runtime.has_own_files:
        runtime.build(Path(path), load_task(Recipe.load(Path(path) / "recipe.yaml").task))


def release_freed_memory() -> None:
    """Hand memory freed so far back to the OS (glibc keeps it for reuse), so what the
    peak window allocates shows as growth instead of reusing what building left behind."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _energy(model: torch.nn.Module, path, task, batch: torch.Tensor, target: Target) -> dict:
    """NVML's counter around the shipped module on a GPU; else the estimate, which counts
    the eager artifact's layers (a runtime's own session has no layers to count)."""
    from autoslim.artifact import load_artifact
    from autoslim.measure.energy import estimate_energy_mj, nvml_energy_mj

    if target.device == "cuda":
        with torch.inference_mode():
            return {
                "energy_mj": nvml_energy_mj(lambda: call_model(model, batch)),
                "energy_source": "nvml",
            }
    if target.runtime != "torch":
        model = load_artifact(path, task=task).model
    return {"energy_mj": estimate_energy_mj(model, batch), "energy_source": "estimated"}


def _paired_values(
    model: torch.nn.Module, reference: torch.nn.Module, batch: torch.Tensor, target: Target
) -> dict:
    from autoslim.measure.paired import paired_latency

    sync = torch.cuda.synchronize if first_tensor(batch).is_cuda else None
    with torch.inference_mode():
        paired = paired_latency(
            lambda: call_model(model, batch),
            lambda: call_model(reference, batch),
            warmup=target.warmup,
            rounds=target.repeats,
            sync=sync,
        )
    return {
        "latency_ms": paired.latency_ms,
        "latency_p10_ms": paired.p10_ms,
        "latency_p90_ms": paired.p90_ms,
        "reference_latency_ms": paired.reference_ms,
        "latency_ratio": paired.ratio,
        "latency_ratio_lo": paired.ratio_lo,
        "latency_ratio_hi": paired.ratio_hi,
        "latency_rounds": paired.rounds,
        "latency_noisy": paired.noisy,
    }


def confirm_latencies(paths: list[str | Path], reference: str | Path, target: Target) -> list[dict]:
    """Re-time several artifacts against ``reference`` in one process, interleaved with
    each other round by round (:func:`autoslim.measure.paired.time_rounds_many`), so
    every point of a front is timed under the same load. One paired summary per path."""
    from autoslim.artifact import load_artifact
    from autoslim.measure.paired import summarise, time_rounds_many

    torch.set_num_threads(target.threads)
    ref = load_artifact(reference)
    batch = to_device(ref.task.example_batch(target.batch_size), target.device)
    models = [shipped_module(p, ref.task, target) for p in paths]
    ref_model = ref.model.to(target.device)
    calls = [(lambda m=m: call_model(m, batch)) for m in models]
    sync = torch.cuda.synchronize if first_tensor(batch).is_cuda else None

    def reference_call():
        return call_model(ref_model, batch)

    with torch.inference_mode():
        for call in [*calls, reference_call] * max(target.warmup, 1):
            call()
        cand, refs = time_rounds_many(calls, reference_call, target.repeats, sync=sync)
    return [summarise(times, refs).as_dict() for times in cand]


def shipped_module(path: str | Path, task, target: Target) -> torch.nn.Module:
    """The artifact at ``path`` as it ships: on the runtime its own recipe names."""
    from autoslim.deploy.runtimes import runtime_named
    from autoslim.recipe import Recipe

    runtime = Recipe.load(Path(path) / "recipe.yaml").target.runtime
    shipped = target.model_copy(update={"runtime": runtime})
    return runtime_named(runtime).deploy(Path(path), task, shipped).module


def confirm_in_subprocess(
    paths: list[str | Path], reference: str | Path, target: Target, *, timeout: float = 900
) -> list[dict]:
    """:func:`confirm_latencies` in a new interpreter, so the caller's threads and caches
    stay out of the timings."""
    from autoslim.trust import child_environment

    env = {**os.environ, **child_environment(), "OMP_NUM_THREADS": str(target.threads)}
    request = json.dumps(
        {
            "paths": [str(p) for p in paths],
            "reference": str(reference),
            "target": target.model_dump_json(),
        }
    )
    cmd = [sys.executable, "-c", _CHILD_CODE.format(call="confirm_main(sys.argv[1])"), request]
    code, text = _run_child(cmd, env, timeout, "re-measuring the front")
    if code != 0:
        raise TrialFailed(f"re-measuring the front failed: {text or code}")
    return json.loads(text)


def confirm_main(request_json: str) -> int:
    request = json.loads(request_json)
    target = Target.model_validate_json(request["target"])
    print(json.dumps(confirm_latencies(request["paths"], request["reference"], target)))
    return 0


def measure_in_subprocess(
    path: str | Path,
    target: Target,
    *,
    splits: tuple[str, ...] = ("val",),
    timeout: float = 900,
    reference: str | Path | None = None,
) -> dict:
    """Run :func:`measure_artifact` in a fresh process and return its values.

    The child's environment is the caller's at this moment, with ``OMP_NUM_THREADS`` set
    to the target's threads and the task trust of this process (:mod:`autoslim.trust`),
    whichever way the child is started.
    """
    from autoslim.trust import child_environment

    build_shipped_form(path, target)
    env = {**os.environ, **child_environment(), "OMP_NUM_THREADS": str(target.threads)}
    if multiprocessing.current_process().daemon:
        code, out = _run_in_new_interpreter(path, target, splits, env, timeout, reference)
    else:
        code, out = _run_in_forked_child(path, target, splits, env, timeout, reference)
    if code != 0:
        reason = out or f"exit status {code}"
        if code < 0:
            reason = f"measuring process killed by signal {-code} (out of memory?)"
        raise TrialFailed(f"measurement failed: {reason}")
    values = json.loads(out)
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"measurement gave non-finite {', '.join(bad)}")
    return values


class _MeasureServer:
    """A process that has imported torch and this module and then only forks.

    The server (:func:`serve`) reads one JSON request per line on stdin,
    forks a child per request, and writes two JSON lines to stdout: the child's pid, then
    its exit code. The child measures with the request's environment and writes its reply
    to the request's file. Unlike multiprocessing's forkserver, nothing of the caller's
    ``__main__`` is re-run in the child, so a script without a main guard is safe.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _ensure_started(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            # -c, not -m: runpy would warn that autoslim.measure already imported this module
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE.format(call="serve()")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            atexit.register(self.proc.kill)
        return self.proc

    def measure(
        self, path, target: Target, splits, env: dict, timeout: float, reference=None
    ) -> tuple[int, str]:
        with self.lock, tempfile.TemporaryDirectory(prefix="autoslim-measure-") as tmp:
            reply_file = Path(tmp) / "reply"
            server = self._ensure_started()
            request = {
                "path": str(path),
                "target": target.model_dump_json(),
                "splits": list(splits),
                "env": env,
                "reply": str(reply_file),
                "reference": _optional_str(reference),
            }
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            pid = json.loads(server.stdout.readline())["pid"]
            # A timer, not select(): the exit-code line may already sit in the reader's
            # buffer, where select() on the pipe would not see it.
            timed_out = threading.Event()
            timer = threading.Timer(timeout, lambda: (timed_out.set(), _kill(pid)))
            timer.start()
            try:
                code = json.loads(server.stdout.readline())["code"]
            finally:
                timer.cancel()
            if timed_out.is_set():
                raise TrialFailed(f"measuring {path} took longer than {timeout:.0f} s")
            return code, reply_file.read_text() if reply_file.exists() else ""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_SERVER = _MeasureServer()

# ``python -c`` puts the current folder first on sys.path (as ''): drop it, so a module
# lying beside an artifact (``cd artifact && autoslim evaluate .``) can never be imported.
_CHILD_CODE = (
    "import sys\nif sys.path and sys.path[0] == '': del sys.path[0]\n"
    "from autoslim.measure.runner import confirm_main, main, serve\nsys.exit({call})"
)


def _optional_str(path) -> str | None:
    return None if path is None else str(path)


def _run_in_forked_child(
    path, target: Target, splits, env: dict, timeout: float, reference=None
) -> tuple[int, str]:
    """(exit code, JSON values or the one-line reason), from a child of the measuring server."""
    try:
        return _SERVER.measure(path, target, splits, env, timeout, reference)
    except (OSError, ValueError, KeyError) as exc:  # the server itself broke: use a new interpreter
        _SERVER.proc = None
        print(
            f"warning: the measuring server failed ({type(exc).__name__}: {exc}); using a new interpreter",
            file=sys.stderr,
        )
        return _run_in_new_interpreter(path, target, splits, env, timeout, reference)


def serve() -> int:
    """The measuring server's loop (see :class:`_MeasureServer`); it ends when stdin closes."""
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: measure, write the reply, exit without the parent's cleanup
            os.environ.clear()
            os.environ.update(request["env"])
            code, text = _measure_to_text(
                request["path"],
                request["target"],
                tuple(request["splits"]),
                request.get("reference"),
            )
            Path(request["reply"]).write_text(text)
            os._exit(code)
        try:
            print(json.dumps({"pid": pid}), flush=True)
            _, status = os.waitpid(pid, 0)
            print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
        except BrokenPipeError:  # the search that asked was killed: nobody reads the answer
            return 0
    return 0


def _run_in_new_interpreter(
    path, target: Target, splits, env: dict, timeout: float, reference=None
) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-c",
        _CHILD_CODE.format(call="main(sys.argv[1:])"),
        str(path),
        "--target",
        target.model_dump_json(),
        "--splits",
        ",".join(splits),
    ]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    return _run_child(cmd, env, timeout, f"measuring {path}")


def _run_child(cmd: list[str], env: dict, timeout: float, what: str) -> tuple[int, str]:
    """(exit code, the last line of stdout, or of stderr on failure) of a new interpreter."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise TrialFailed(f"{what} took longer than {timeout:.0f} s") from None
    stream = proc.stdout if proc.returncode == 0 else proc.stderr
    lines = [ln for ln in stream.strip().splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def _measure_to_text(
    path: str, target_json: str, splits: tuple[str, ...], reference: str | None = None
) -> tuple[int, str]:
    """(exit code, one JSON line of values or a one-line reason): what both ways report."""
    try:
        target = Target.model_validate_json(target_json)
        return 0, json.dumps(
            measure_artifact(path, target, splits=tuple(splits), reference=reference)
        )
    except AutoslimError as exc:
        return 2, f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 — the parent records the reason, not a traceback
        return 1, f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoslim.measure.runner")
    parser.add_argument("artifact")
    parser.add_argument("--target", default="{}")
    parser.add_argument("--splits", default="val")
    parser.add_argument("--reference", default=None)
    args = parser.parse_args(argv)
    code, text = _measure_to_text(
        args.artifact, args.target, tuple(args.splits.split(",")), args.reference
    )
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
