"""The timing arithmetic behind the progress lines (utils.training.progress), on a fake clock."""
import pytest

from utils.training.progress import EpochMeter, RunClock, format_duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_format_duration():
    assert format_duration(None) == '?'
    assert format_duration(0) == '0:00:00'
    assert format_duration(245.4) == '0:04:05'
    assert format_duration(3600 * 27 + 46 * 60 + 40) == '1d 03:46:40'
    assert format_duration(-3) == '0:00:00'


def test_throughput_is_the_epoch_average_not_one_batch():
    clock = FakeClock()
    meter = EpochMeter(total=100, epoch=0, world=2, clock=clock)
    for seconds in [1.0] * 9 + [20.0]:  # one batch 20x slower, as on a busy shared machine
        clock.now += seconds
        meter.update(batch_size=36)
    f = meter.figures()
    assert f['s_per_batch'] == pytest.approx(29.0 / 10)
    assert f['img_s'] == pytest.approx(10 * 36 * 2 / 29.0)  # both processes' images
    assert f['epoch_eta'] == pytest.approx(90 * 2.9)
    assert f['run_eta'] is None  # no run clock


def test_run_eta_counts_later_epochs_and_the_measured_evaluation_time():
    clock = FakeClock()
    run = RunClock(num_epochs=5, clock=clock)
    # epoch 2: 10 batches of 3 s, then 12 s of evaluation and saving
    run.start_epoch()
    meter = EpochMeter(total=10, epoch=2, run_clock=run, clock=clock)
    for _ in range(4):
        clock.now += 3.0
        meter.update(8)
    # before any epoch ended the overhead is unknown: 6 batches left + 2 later epochs of 30 s
    assert meter.figures()['run_eta'] == pytest.approx(6 * 3 + 2 * 30)
    clock.now += 6 * 3.0
    clock.now += 12.0
    run.end_epoch(train_seconds=30.0)
    assert run.overhead == pytest.approx(12.0)
    assert run.remaining_after(2) == pytest.approx(2 * 42.0)
    assert run.elapsed() == pytest.approx(42.0)
    # epoch 3, now at 2 s per batch: 8 batches left, its evaluation, then epoch 4 (20 s + 12 s)
    run.start_epoch()
    meter = EpochMeter(total=10, epoch=3, run_clock=run, clock=clock)
    clock.now += 4.0
    meter.update(8)
    meter.update(8)
    assert meter.figures()['epoch_eta'] == pytest.approx(16.0)
    assert meter.figures()['run_eta'] == pytest.approx(16 + 12 + (20 + 12))
    assert RunClock(3, clock=clock).remaining_after(0) is None


def test_log_lines_every_interval_and_at_least_every_minute():
    clock = FakeClock()
    meter = EpochMeter(total=1000, epoch=0, log_interval=50, clock=clock)
    due = []
    for i in range(200):
        clock.now += 0.1 if i < 100 else 30.0  # from batch 100 on, 30 s per batch
        meter.update(4)
        if meter.log_due():
            due.append(meter.batches)
    assert due[:2] == [50, 100]
    assert due[2:] == list(range(102, 201, 2))  # every second 30-s batch: a minute has passed
    last = EpochMeter(total=3, epoch=0, log_interval=1, clock=clock)
    flags = []
    for _ in range(3):
        last.update(4)
        flags.append(last.log_due())
    assert flags == [True, True, False]  # the epoch's own line follows the last batch


def test_log_line_and_bar_postfix_show_the_figures():
    clock = FakeClock()
    run = RunClock(2, clock=clock)
    run.start_epoch()
    meter = EpochMeter(total=4, epoch=0, run_clock=run, clock=clock)
    clock.now += 0.5
    meter.update(10)
    line = meter.line(loss=2.5, lr=5e-4)
    assert line == ('epoch 0 [1/4] loss 2.5000 lr 0.0005 | 0.500 s/batch, 20.0 img/s | '
                    'ETA epoch 0:00:02, run 0:00:04')
    assert meter.postfix(2.5, 5e-4) == dict(loss='2.5000', lr='0.0005', img_s='20.0', run_eta='0:00:04')
