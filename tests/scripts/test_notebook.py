"""The quickstart notebook executes from top to bottom (it never rots)."""
import os

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, 'examples', 'quickstart.ipynb')


@pytest.mark.slow  # a Jupyter kernel and Kodak: half a minute
def test_quickstart_notebook_runs(shared_dir, monkeypatch, tmp_path):
    monkeypatch.setenv('LVAE_DATASETS', os.path.join(shared_dir, 'datasets'))
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    monkeypatch.setenv('PYTHONPATH', os.path.dirname(os.path.dirname(NOTEBOOK)))  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                     resources={'metadata': {'path': str(tmp_path)}})
    client.execute()
    outputs = ''.join(o.get('text', '') for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs)
    assert 'BD-rate w.r.t. VTM 18.0' in outputs
    assert 'lambda' in outputs and 'bpp' in outputs
