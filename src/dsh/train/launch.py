"""``dsh train --nproc N``: training in N processes on this machine, launched with torchrun's elastic launcher,
its rendezvous on the loopback interface."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from ..config import save_config
from ..errors import ConfigError
from ..utils.runlock import check_unlocked
from .distributed import check_batch_size
from .rundir import resolve_run


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), for ``GLOO_SOCKET_IFNAME``."""
    try:
        return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    except OSError:
        return None


def launch_train(cfg, run_dir: str | os.PathLike, nproc: int, resume: bool = False, quiet: bool = False) -> int:
    """Run ``dsh train`` in ``nproc`` processes on this machine with torchrun's elastic launcher
    (:mod:`torch.distributed.run`, here in this process), its rendezvous on 127.0.0.1; returns an exit status
    (the workers' own where they all failed alike, e.g. 2 for a user error, else 1).

    The settings are checked here first (``--batch-size`` against ``nproc``, the run folder), so that a mistake is
    one line and not one per process. The workers receive the resolved settings as a config file (or, with
    ``resume``, read them from the run).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run



    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    check_unlocked(run_dir)  # a folder another training holds: one line here (rank 0 claims it for real)
    cfg, _ = resolve_run(cfg, Path(run_dir), resume)
    check_batch_size(cfg.batch_size, nproc)
    env = {"MASTER_ADDR": "127.0.0.1"}  # the workers' environment is this process's
    lo = loopback_interface()
    if lo is not None and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = lo
    saved = {k: os.environ.get(k) for k in env}
    with tempfile.TemporaryDirectory(prefix="dsh-launch-") as tmp:
        args = ["train", "--out", str(run_dir)]
        if resume:
            args.append("--resume")
        else:
            save_config(cfg, Path(tmp) / "config.json")
            args += ["--config", str(Path(tmp) / "config.json")]
        if quiet:
            args.append("--quiet")
        launcher = get_args_parser().parse_args(
            ["--nnodes", "1", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
             "--master-port", str(free_port()), "-m", "dsh", *args])
        os.environ.update(env)
        try:
            run(launcher)
        except ChildFailedError as e:
            codes = {f.exitcode for f in e.failures.values()}
            return codes.pop() if len(codes) == 1 and min(codes) > 0 else 1
        except SignalException as e:  # Ctrl-C or a kill: the workers have been ended
            return 128 + int(e.sigval)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return 0
