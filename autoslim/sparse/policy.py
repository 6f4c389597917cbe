"""Storage policy: store each sparse weight in its smallest encoding, or for its fastest kernel.

``smallest`` (the default) keeps the encoding with the fewest bytes, found by actually
encoding every format (:func:`autoslim.sparse.choose.smallest_format`).

``fastest`` stores a weight in the layout of the kernel that will run it on the target.
What that buys has limits. :func:`autoslim.artifact.load_artifact` decodes every weight
at load, then :func:`autoslim.sparse.runtime.sparse_runtime` chooses CSR or dense for
each Linear from the measured, cached crossover. So the stored format changes latency
only through that kernel choice, and the runtime makes the same choice whatever the
format. The ``fastest`` policy makes storage follow the same decision
(:func:`autoslim.sparse.runtime.planned_kernels`, called on the model as it will run):

- A layer the runtime will run on CSR is stored as CSR. The file then holds what
  the kernel reads, and a deployment runtime can use it without re-encoding. It can
  cost bytes: at 90 % unstructured sparsity CSR is 0.150x dense fp32 and the bitmap
  is 0.131x.
- Every other layer will run dense, and every format decodes to the same dense
  weight at load, so all formats tie on speed and the smallest is stored. The
  ``fastest`` policy never stores dense just because the dense kernel runs.

The latency that autoslim measures is therefore the same under both policies on the
machine that wrote the artifact. On another CPU the runtime measures its own crossover,
and the stored format still decodes exactly.

A recipe records its policy in ``target.storage_policy``, so ``autoslim apply`` rebuilds
the same bytes. A recipe without the field means ``smallest``. An experiment without it
gets ``smallest`` even when latency is one of its objectives: the two policies measure
the same latency here (the tests pin that both load onto the same kernels), so among
equally fast encodings the smallest wins, and ``fastest`` would only add bytes to every
trial on the front. Ask for ``fastest`` explicitly when a deployment runtime reads the
stored CSR directly. The choice is settled when each trial's recipe is made
(:func:`settle_storage_policy`).
"""

from __future__ import annotations

from autoslim.recipe import Target

SMALLEST = "smallest"
FASTEST = "fastest"
POLICIES = (SMALLEST, FASTEST)


def policy_of(target: Target) -> str:
    """The policy a recipe's target asks for; unset means smallest (recipes written before)."""
    return target.storage_policy or SMALLEST


def settle_storage_policy(target: Target) -> Target:
    """The target with its policy made explicit, so the recipe replays without the experiment."""
    if target.storage_policy is not None:
        return target
    # Latency ties between the policies on autoslim's runtime (see the module docstring),
    # so the objectives (a latency one included) do not change the default.
    return target.model_copy(update={"storage_policy": SMALLEST})
