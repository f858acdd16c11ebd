"""docs/tutorial.ipynb runs top to bottom in a fresh kernel of this interpreter, and what it computed
holds: the facts its last cell prints (sample shapes, bits/dim, the forward SDE against its closed
form, inpainting that keeps the known pixels, guidance that draws the digit asked for), not the
outputs recorded in the file, which may come from another machine."""

import json
import sys

import nbclient
import nbformat
import pytest

from conftest import ROOT, shared_build
from score_jax import xla_cpu

NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
KERNEL = "score_jax_tutorial"
# Per cell; the notebook takes about two minutes on 2 idle cores, a loaded CI machine several times that.
CELL_TIMEOUT_S = 900


def install_kernelspec(root) -> None:
    """A kernelspec under root that starts ipykernel with this interpreter (not whatever 'python3' a
    user or system Jupyter installed names), with the XLA flags a user gets: the suite's
    compile-fast flag would slow the notebook's training loop more than it saves in compilation."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "score_jax tutorial", "language": "python",
        "env": {"XLA_FLAGS": xla_cpu.with_defaults(""), "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))


def printed_facts(nb) -> dict:
    """The JSON dict printed by the cell tagged 'facts'."""
    cells = [c for c in nb.cells if "facts" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook must have exactly one cell tagged 'facts'"
    text = "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")
    return json.loads(text)


def _execute(directory) -> None:
    """Run the notebook in a fresh kernel; its printed facts go to directory/facts.json."""
    root = directory / "jupyter"
    install_kernelspec(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))          # searched before the user's and system's specs
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        mp.setenv("IPYTHONDIR", str(root / "ipython"))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()   # raises CellExecutionError, with the cell and its traceback, on any error
    (directory / "facts.json").write_text(json.dumps(printed_facts(nb)))


@pytest.fixture
def facts():
    # Executed once per test run whichever xdist worker asks first (a module fixture ran it on
    # both workers: twice the suite's slowest setup).
    return json.loads((shared_build("tutorial", _execute) / "facts.json").read_text())


def test_tutorial_samples_and_likelihood(facts):
    assert facts["sample_shapes"] == {name: [16, 8, 8, 1] for name in ("PC", "ODE", "Heun")}
    assert facts["nfe"]["Heun"] == 20 and facts["nfe"]["PC"] == 500
    # Uniform over the 256 levels scores 8; the quick start's model 5.2.
    assert 0.0 < facts["bits_per_dim"] < 8.0


def test_tutorial_forward_sde_matches_closed_form(facts):
    # 50 000 particles in 60 bins: the histogram's own noise is about 0.01.
    assert max(facts["gmm_total_variation"]) < 0.05


def test_tutorial_controllable_generation(facts):
    assert facts["inpaint_shape"] == [8, 8, 8, 1]
    assert facts["inpaint_known_max_error"] == 0.0
    assert facts["conditional_shape"] == [20, 8, 8, 1]
    # Chance is 10%; the notebook's guided samples read right 70-80% of the time.
    assert facts["conditional_agreement"] > 0.5
