"""The training loop and its processes: the entry points, the epochs, the model, and the processes that run them.

- ``main``: the two entry points every data set's ``train.py`` and ``test.py`` call (``train_main``, ``test_main``).
- ``engine``: one training epoch and one evaluation pass, the same for every data set.
- ``factory``: the model of a config through timm's registry, and the honest name of the architecture that runs.
- ``finetune``: a new run that starts from a checkpoint's weights (``--initial-checkpoint``).
- ``timm_flags``: what timm's ``train.py`` flags do here (``--experiment``, ``--smoke``, compile, W&B, ...).
- ``distributed``: the process group for torchrun and SLURM, and failures shared between ranks.
- ``slurm``: processes started by SLURM's ``srun``: rank, world size, local rank, rendezvous address.
- ``preemption``: mid-epoch checkpoints on a timer and on SIGUSR1/SIGTERM.
- ``memory_estimate``: the memory one training step needs, and the refusal when it cannot fit.
- ``progress``: time per batch, images/s and the ETA of the epoch and of the run.
"""
