"""The run folder and its files: what a run writes, how it is claimed, resumed and finished.

- ``run_folder``: the run folder of a training run: checks before it writes, resume in place, the recipe kept.
- ``run_claim``: one run per folder (a kernel lock), and unique default folder names.
- ``finished_run``: what ``--resume`` does with a run that has trained its whole schedule.
- ``atomic``: files written whole or not at all, and appends only to the folder's own files.
- ``checkpoint``: run checkpoints in timm's format, written so that a kill at any instant leaves a consistent run.
- ``checkpoint_history``: ``--checkpoint-hist N``, the last N epoch checkpoints.
- ``results_file``: ``test.py --results-file``, one row per evaluated checkpoint.
- ``provenance``: how a run or an evaluation was made (``run.json``: command, git commit, versions, host).
- ``allow_change``: deliberate changes on resume (``--allow-change``).
"""
