"""The engine shared by every entry point: config, data, model, training loop, checkpoints, distributed.

Importing the package itself does nothing (no imports): entry points import ``utils.errors`` first, so that Ctrl-C
is one line from their first instruction on (the SpikingJelly warning filter lives in ``models/__init__.py``).

Its modules, grouped by concern (each sub-package's ``__init__`` lists its modules, one line each):

- ``utils.config``: the one schema of config keys, YAML files and ``--key value`` overrides.
- ``utils.errors``: bad input ends in a one-screen message and a non-zero exit code, never a traceback.
- ``utils.gpu_report``: the summary table of ``scripts/gpu_check.sh`` (``python -m utils.gpu_report OUT_DIR``).
- ``utils.data``: the data sets, their loaders and the checks of what they hold: ``loaders``, ``data_checks``,
  ``input_checks``, ``dvs_data``, ``aedat``, ``image_files``, ``folder_data``, ``rand_augment_ops``,
  ``resumable_data``.
- ``utils.run``: the run folder and its files: ``run_folder``, ``run_claim``, ``finished_run``, ``atomic``,
  ``checkpoint``, ``checkpoint_history``, ``results_file``, ``provenance``, ``allow_change``.
- ``utils.training``: the training loop and its processes: ``main`` (``train_main``, ``test_main``), ``engine``,
  ``factory``, ``finetune``, ``timm_flags``, ``distributed``, ``slurm``, ``preemption``, ``memory_estimate``,
  ``progress``.
"""
