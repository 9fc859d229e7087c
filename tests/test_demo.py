import subprocess
import sys

from gpflow_kernels.demo import run


def test_demo_flow_reduces_mmd_and_energy_distance():
    out = run(n_particles=200, n_steps=60, log=lambda s: None)
    first, last = out["history"][0], out["history"][-1]
    assert last["mmd2"] < 0.2 * first["mmd2"]
    assert last["energy"] < 0.5 * first["energy"]


def test_module_entry_point_runs_as_in_the_readme():
    res = subprocess.run([sys.executable, "-m", "gpflow_kernels", "--particles", "100", "--steps", "20"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "MMD² to held-out data" in res.stdout


def test_bad_option_exits_nonzero():
    res = subprocess.run([sys.executable, "-m", "gpflow_kernels", "--steps", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "--steps" in res.stderr
