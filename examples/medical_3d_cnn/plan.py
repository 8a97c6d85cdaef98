"""A small 3D CNN telling two classes of T1 volumes apart, on medical-folder datasets.

The nodes register their scans with `--type medical-folder --target label`: the plan
reads one subject at a time through `load_dataset()` (a MedicalFolderDataset) and
trains on the T1 volumes, standardised per volume.
"""

import torch

from common.data import DataManager
from common.optimizers.declearn import AdamModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class Medical3dCnnPlan(TorchTrainingPlan):
    """Conv3d -> pool -> Conv3d -> global pool -> 2 logits; `model_args["channels"]` filters."""

    def init_dependencies(self):
        return [
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.declearn import AdamModule",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):
        channels = int(model_args.get("channels", 4))
        return torch.nn.Sequential(
            torch.nn.Conv3d(1, channels, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool3d(2),
            torch.nn.Conv3d(channels, channels, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool3d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(channels, 2),
        )

    def init_optimizer(self):
        return Optimizer(lr=0.01, modules=[AdamModule()])

    @staticmethod
    def standardize(volume):
        """Zero mean, unit variance per volume (a MONAI NormalizeIntensity would do too)."""
        return (volume - volume.mean()) / (volume.std() + 1e-6)

    def training_data(self):
        dataset = self.load_dataset(
            modalities=["T1"], transform=self.standardize, target_transform=int
        )
        return DataManager(dataset, shuffle=True)

    def training_step(self, data, target):
        images, _demographics = data
        logits = self.model()(images["T1"])
        return torch.nn.functional.cross_entropy(logits, target)

    def testing_step(self, data, target):
        images, _demographics = data
        logits = self.model()(images["T1"])
        return {
            "loss": torch.nn.functional.cross_entropy(logits, target),
            "accuracy": (logits.argmax(dim=1) == target).float().mean(),
        }
