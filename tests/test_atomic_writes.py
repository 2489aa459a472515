"""The one atomic writer (utils.run.atomic): whole file or the old one, no temporary left, the extension kept for
writers that pick the format by it, and the run folder's clean-up of what a kill leaves."""
import os

import matplotlib
import pytest

from utils.run.atomic import replace_atomically, temporary_name
from utils.run.run_folder import remove_temporaries

matplotlib.use('Agg')


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'summary.csv'
    replace_atomically(str(path), lambda tmp: open(tmp, 'w').write('epoch\n0\n'))

    def half_then_full(tmp):
        with open(tmp, 'w') as f:
            f.write('epoch\n0\n1')
        raise OSError(28, 'No space left on device')

    with pytest.raises(OSError):
        replace_atomically(str(path), half_then_full)
    assert path.read_text() == 'epoch\n0\n' and os.listdir(tmp_path) == ['summary.csv']


def test_the_temporary_keeps_the_extension(tmp_path):
    import matplotlib.pyplot as plt
    assert temporary_name('run/energy.png').endswith('.png')
    fig = plt.figure()
    replace_atomically(str(tmp_path / 'energy.png'), fig.savefig)  # matplotlib picks the format by the extension
    plt.close(fig)
    assert (tmp_path / 'energy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    leftovers = [os.path.basename(temporary_name(name)) for name in ('last.pth.tar', 'summary.csv', 'args.yaml')]
    leftovers += ['model_best.pth.tar.tmp77', 'args.yaml.tmp']  # names of earlier versions
    kept = ['last.pth.tar', 'notes.tmp', 'summary.csv.bak']
    for name in leftovers + kept:
        (tmp_path / name).write_text('x')
    assert remove_temporaries(str(tmp_path)) == sorted(leftovers)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
