"""Optimizers for fedloom: declearn's optimizer on nodes and researcher, adapters and codecs.

- `Optimizer` (optimizer.py): the object training plans and experiments build;
- `declearn.py`: the supported declearn modules and regularizers, `list_optim_*()`;
- `adapters.py`: what the node's training loop drives (`TrainingOptimizer`);
- `torch_fused.py`: the node's fast path, declearn's update math as in-place torch kernels;
- `aux_codec.py`: aux vars to and from protobuf plus payload arrays;
- `state_codec.py`: optimizer states to and from JSON plus arrays (no pickle).
"""

from common.optimizers.declearn import list_optim_modules, list_optim_regularizers
from common.optimizers.optimizer import Optimizer

__all__ = ["Optimizer", "list_optim_modules", "list_optim_regularizers"]
