"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the environment.

Sources, first match wins:

1. explicit arguments (``--coordinator HOST:PORT --num-processes N --process-id I``);
2. ``JAXEMBED_COORDINATOR`` / ``JAXEMBED_NUM_PROCESSES`` / ``JAXEMBED_PROCESS_ID``;
3. ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``), or a
   cluster JAX auto-detects (SLURM, Open MPI, TPU pods, GKE): call
   ``jax.distributed.initialize()`` with no arguments.

Otherwise nothing happens (one process). On CPU, cross-process collectives
need the gloo implementation (``jax_cpu_collectives_implementation='gloo'``),
set here before initialisation.

Example::

    maybe_initialize(coordinator="127.0.0.1:1234", num_processes=2, process_id=0)
"""

from __future__ import annotations

import os

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> dict | None:
    """The ``initialize`` keyword arguments to use, ``{}`` for auto-detect, ``None`` for none."""
    if coordinator:
        return {"coordinator_address": coordinator, "num_processes": num_processes,
                "process_id": process_id}
    env = os.environ
    if env.get("JAXEMBED_COORDINATOR"):
        return {"coordinator_address": env["JAXEMBED_COORDINATOR"],
                "num_processes": int(env["JAXEMBED_NUM_PROCESSES"]),
                "process_id": int(env["JAXEMBED_PROCESS_ID"])}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kw = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if env.get("JAX_NUM_PROCESSES"):
            kw["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kw["process_id"] = int(env["JAX_PROCESS_ID"])
        return kw
    if any(k in env for k in _CLUSTER_ENV):
        return {}
    return None


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialise the distributed runtime if configured; returns whether it did."""
    kwargs = resolve(coordinator, num_processes, process_id)
    if kwargs is None:
        return False
    import jax

    # CPU processes need gloo for cross-process collectives; the flag only affects
    # the CPU client, so it is harmless on GPU/TPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return True
