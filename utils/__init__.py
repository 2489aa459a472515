"""The engine shared by every entry point: config, data, model, training loop, checkpoints, distributed."""
import warnings

# SpikingJelly scripts a few functions with torch.jit at import, which this torch deprecates: one warning per run
# that the user can do nothing about (pytest.ini filters it the same way).
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
