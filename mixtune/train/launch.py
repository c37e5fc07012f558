"""How a training entry point is started: in this process, or one process per GPU.

One device needs no launcher: the flow calls the entry in-process. With more
than one GPU visible, one process per GPU is started by ``accelerate launch``
(default) or ``torchrun``; each process reads RANK / WORLD_SIZE / LOCAL_RANK
from its environment and ``mixtune.train.loop`` trains its share of every
global batch, gradients summed across processes.

Multi-node: run the same command on every node with ``num_nodes`` set, each
node's own ``node_rank`` (0..num_nodes-1), and ``main_address`` /
``main_port`` of node 0, reachable from all nodes. ``processes_per_node`` is
the GPU count of one node; the world size is their product, and the global
batch size must be a multiple of it times per_device_batch_size.

The command is only built here, as a list of arguments; running it (and
where) is the caller's decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

Launcher = Literal["accelerate", "torchrun"]


@dataclass(frozen=True)
class LaunchPlan:
    in_process: bool  # True: call the entry directly, no subprocess
    argv: list[str] = field(default_factory=list)  # the command when not in process
    world_size: int = 1


def visible_gpus() -> int:
    """CUDA devices this process can see (honours CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_launch(entry_module: str, entry_args: Sequence[str] = (), *, processes_per_node: int | None = None,
                 launcher: Launcher = "accelerate", num_nodes: int = 1, node_rank: int = 0,
                 main_address: str | None = None, main_port: int = 29500,
                 mixed_precision: Literal["no", "bf16"] = "no") -> LaunchPlan:
    """The plan for running ``python -m entry_module *entry_args`` on every local GPU.

    ``processes_per_node`` defaults to the visible GPU count. A single process
    on a single node runs in-process. ``mixed_precision`` is passed to
    accelerate only; mixtune's loop does its own autocast, so "no" is right
    unless the entry relies on accelerate's.
    """
    processes = visible_gpus() if processes_per_node is None else processes_per_node
    processes = max(processes, 1)
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node_rank must be in 0..{num_nodes - 1}, got {node_rank}")
    if num_nodes > 1 and not main_address:
        raise ValueError("several nodes need main_address: the address of node 0, reachable from every node")
    world_size = processes * num_nodes
    if world_size == 1:
        return LaunchPlan(in_process=True, argv=[], world_size=1)
    if launcher == "accelerate":
        argv = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world_size),
                "--num_machines", str(num_nodes), "--machine_rank", str(node_rank),
                "--main_process_port", str(main_port), "--mixed_precision", mixed_precision]
        if main_address:
            argv += ["--main_process_ip", main_address]
        argv += ["--module", entry_module, *entry_args]
    elif launcher == "torchrun":
        argv = ["torchrun", "--nproc_per_node", str(processes), "--nnodes", str(num_nodes),
                "--node_rank", str(node_rank), "--master_port", str(main_port)]
        if main_address:
            argv += ["--master_addr", main_address]
        argv += ["-m", entry_module, *entry_args]
    else:
        raise ValueError(f"unknown launcher {launcher!r}; use 'accelerate' or 'torchrun'")
    return LaunchPlan(in_process=False, argv=argv, world_size=world_size)
