"""The kernels' choice of 512-bit vectors: taken only on CPUs with AVX-512 popcount, and never over a user's own
numba target or the opt-out. Each case is a fresh process, since numba fixes its target at the first compile."""

import os
import subprocess
import sys

import llvmlite.binding as llvm
import pytest

PROBE = ("import numba.core.config as c, dsh.codes.kernels as K; "
         "print(K.WIDE_VECTORS, c.CPU_FEATURES is not None and c.CPU_FEATURES.endswith(',-prefer-256-bit'))")


def probe(**env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DSH_WIDE_VECTORS", "NUMBA_CPU_NAME",
                                                              "NUMBA_CPU_FEATURES")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_wide_vectors_follow_the_host():
    has = bool(llvm.get_host_cpu_features().get("avx512vpopcntdq"))
    assert probe() == [str(has), str(has)]


@pytest.mark.parametrize("env", [{"DSH_WIDE_VECTORS": "0"}, {"NUMBA_CPU_NAME": "generic"}])
def test_the_opt_out_and_a_users_own_target_are_left_alone(env):
    assert probe(**env) == ["False", "False"]
