"""No byte is written through a link (utils.run.atomic): appends go only to a regular file with one link, whole files
are replaced by a rename. A symlinked log.txt or train_files.txt, and a run folder copied with ``cp -al`` (every file a
hard link of the original's, the claim's lock file included), are written in their own folder only."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, EventFrames, read_summary, tiny_cifar_run
from utils.data.loaders import write_sample_files
from utils.run import run_claim
from utils.run.atomic import NotAFileOfItsOwn, append_text
from utils.training.main import train_main


def test_an_append_to_a_symlink_copies_it_and_leaves_the_target_alone(tmp_path):
    outside = tmp_path / 'outside.txt'
    outside.write_text('theirs\n')
    (tmp_path / 'run').mkdir()
    log = tmp_path / 'run' / 'log.txt'
    log.symlink_to(outside)
    append_text(str(log), 'mine\n')
    assert outside.read_text() == 'theirs\n'
    assert not log.is_symlink() and log.read_text() == 'theirs\nmine\n'


def test_an_append_to_a_hard_link_detaches_it(tmp_path):
    original = tmp_path / 'a.txt'
    original.write_text('one\n')
    linked = tmp_path / 'b.txt'
    os.link(original, linked)
    append_text(str(linked), 'two\n')
    assert original.read_text() == 'one\n' and linked.read_text() == 'one\ntwo\n'
    assert os.stat(original).st_nlink == 1 and os.stat(linked).st_nlink == 1
    append_text(str(linked), 'three\n')  # now its own file: appended in place
    assert linked.read_text() == 'one\ntwo\nthree\n'


def test_an_append_to_a_dangling_link_or_a_fifo(tmp_path):
    dangling = tmp_path / 'log.txt'
    dangling.symlink_to(tmp_path / 'elsewhere' / 'log.txt')
    append_text(str(dangling), 'x\n')
    assert dangling.read_text() == 'x\n' and not (tmp_path / 'elsewhere').exists()
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(NotAFileOfItsOwn, match='not a regular file'):  # refused, without blocking on the FIFO
        append_text(str(fifo), 'x\n')


def test_sample_lists_are_not_written_through_links(tmp_path):
    outside = tmp_path / 'outside.txt'
    outside.write_text('theirs\n')
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'train_files.txt').symlink_to(outside)
    os.link(outside, run / 'test_files.txt')
    write_sample_files(str(run), EventFrames(3), EventFrames(2))
    assert outside.read_text() == 'theirs\n'
    assert (run / 'train_files.txt').read_text() == 'sample0.npz\nsample1.npz\nsample2.npz\n'
    assert (run / 'test_files.txt').read_text() == 'sample0.npz\nsample1.npz\n'


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    return tiny_cifar_run(tmp_path_factory.mktemp('links'), epochs=2)[1]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_hard_link_copy_of_a_run_resumes_without_touching_the_original(two_epochs, tmp_path):
    original = tmp_path / 'original'
    subprocess.run(['cp', '-r', str(two_epochs), str(original)], check=True)
    # a claim held in the original (its run is going on); the copy then shares the lock file too
    holder = subprocess.Popen([sys.executable, '-c', f'import sys, time; sys.path.insert(0, {str(REPO)!r}); '
                               f'from utils.run.run_claim import claim_folder; claim_folder({str(original)!r}, str); '
                               f'print("held", flush=True); time.sleep(600)'], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        copy = tmp_path / 'copy'
        subprocess.run(['cp', '-al', str(original), str(copy)], check=True)
        assert os.stat(copy / 'log.txt').st_nlink == 2 and os.stat(copy / run_claim.LOCK_NAME).st_nlink == 2
        before = snapshot(original)
        train_main(['--resume', str(copy / 'last.pth.tar'), '--epochs', '3'])  # its own claim, not the original's
        assert snapshot(original) == before
        assert [row['epoch'] for row in read_summary(copy)] == ['0', '1', '2']
        assert 'resumed from' in (copy / 'log.txt').read_text()
        assert 'resumed from' not in (original / 'log.txt').read_text()
    finally:
        holder.kill()
        holder.wait()


def test_a_symlinked_log_of_a_run_is_not_written_through(two_epochs, tmp_path):
    folder = tmp_path / 'run'
    subprocess.run(['cp', '-r', str(two_epochs), str(folder)], check=True)
    outside = tmp_path / 'shared_log.txt'
    outside.write_text('another run\'s log\n')
    (folder / 'log.txt').unlink()
    (folder / 'log.txt').symlink_to(outside)
    train_main(['--resume', str(folder / 'last.pth.tar'), '--epochs', '3'])
    assert outside.read_text() == 'another run\'s log\n'
    log = (folder / 'log.txt').read_text()
    assert log.startswith('another run\'s log\n') and 'resumed from' in log
