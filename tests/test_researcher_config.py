"""TOML experiments: every block parsed and checked, errors naming the file and the key."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from common.errors import ConfigurationError
from common.secagg import SecureAggregation
from researcher.config import load_experiment_config
from researcher.strategies import DefaultStrategy, SamplingStrategy
from tests.conftest import ROOT, fedloom_cmd

EXAMPLE = ROOT / "examples" / "fedyogi_scaffold"

PLAN = """\
import torch

from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class TinyPlan(TorchTrainingPlan):
    def init_dependencies(self):
        return ["import torch", "from common.optimizers.optimizer import Optimizer"]

    def init_model(self):
        return torch.nn.Linear(3, 1)

    def init_optimizer(self):
        return Optimizer(lr=0.1)

    def training_data(self):
        raise NotImplementedError

    def training_step(self, data, target):
        return self.model()(data).sum()
"""

VALID = """\
name = "tiny"
tags = ["#a", "#b"]
rounds = 3
nodes = ["node-1", "node-2"]
secagg = true

[plan]
file = "plan.py"
class = "TinyPlan"

[training_args]
epochs = 2
batch_size = 16
test_ratio = 0.2
test_on_local_updates = true
test_on_global_updates = true
dry_run = false
round_timeout = 30

[aggregator]
name = "fedavg"

[agg_optimizer]
lr = 0.5
modules = ["scaffold-server", ["yogi", {beta_1 = 0.8}]]
regularizers = []

[strategy]
name = "sampling"
fraction = 0.5
min_nodes = 2
seed = 7
"""


def write(tmp_path: Path, toml_text: str, plan: str = PLAN) -> Path:
    (tmp_path / "plan.py").write_text(plan, encoding="utf-8")
    path = tmp_path / "experiment.toml"
    path.write_text(textwrap.dedent(toml_text), encoding="utf-8")
    return path


def test_every_block_reaches_the_experiment(tmp_path: Path) -> None:
    config = load_experiment_config(write(tmp_path, VALID))
    exp = config.build_experiment(tmp_path / "out")

    assert config.name == "tiny"
    assert exp.tags() == ["#a", "#b"]
    assert exp.nodes() == ["node-1", "node-2"]
    assert exp.round_limit() == 3
    assert exp.training_plan_class().__name__ == "TinyPlan"
    args = exp.training_args()
    assert (args["epochs"], args["batch_size"], args["test_ratio"], args["round_timeout"]) == (
        2,
        16,
        0.2,
        30,
    )
    assert args["test_on_local_updates"] and args["test_on_global_updates"] and not args["dry_run"]
    assert type(exp.aggregator()).__name__ == "FedAverage"
    optimizer = exp.agg_optimizer()
    assert optimizer.module_names == ["scaffold-server", "yogi"]
    assert optimizer.to_spec()["modules"][1][1]["beta_1"] == 0.8
    assert optimizer.lr == 0.5
    strategy = exp.strategy()
    assert isinstance(strategy, SamplingStrategy)
    assert (strategy.fraction, strategy.min_nodes, strategy.seed) == (0.5, 2, 7)
    assert exp.secagg() == SecureAggregation()
    assert exp.experimentation_folder() == tmp_path / "out"


def test_defaults_need_only_tags_rounds_and_plan(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'tags = ["#a"]\nrounds = 1\n[plan]\nfile = "plan.py"\nclass = "TinyPlan"\n'
    )
    exp = load_experiment_config(path).build_experiment(tmp_path / "out")
    assert load_experiment_config(path).name == "experiment"
    assert exp.agg_optimizer() is None
    assert isinstance(exp.strategy(), DefaultStrategy)
    assert exp.secagg() is None


def test_secagg_table_becomes_secure_aggregation_settings(tmp_path: Path) -> None:
    text = VALID.replace("secagg = true\n", "") + "\n[secagg]\nclip = 100.0\nfraction_bits = 20\n"
    exp = load_experiment_config(write(tmp_path, text)).build_experiment(tmp_path / "out")
    assert exp.secagg() == SecureAggregation(clip=100.0, fraction_bits=20)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("rounds = 3", "roundz = 3", "unknown key 'roundz' (did you mean 'rounds'?)"),
        ("rounds = 3", "rounds = 0", "rounds must be an integer >= 1"),
        (
            'class = "TinyPlan"',
            'class = "HugePlan"',
            "defines no class 'HugePlan'; training plan classes found there: ['TinyPlan']",
        ),
        ('file = "plan.py"', 'file = "missing.py"', "[plan] file:"),
        (
            'modules = ["scaffold-server", ["yogi", {beta_1 = 0.8}]]',
            'modules = ["yogii"]',
            "[agg_optimizer]: unknown entry 'yogii' in modules",
        ),
        ("lr = 0.5", "learning_rate = 0.5", "[agg_optimizer]: unknown key 'learning_rate'"),
        (
            "batch_size = 16",
            "batch_sise = 16",
            "[training_args]: unknown training argument(s) ['batch_sise']",
        ),
        (
            "epochs = 2",
            "epochs = 2\nnum_updates = 4",
            "[training_args]: training_args sets both 'epochs' and 'num_updates'",
        ),
        ('name = "sampling"', 'name = "roulette"', "[strategy] name: unknown strategy 'roulette'"),
        ("fraction = 0.5", "fraction = 1.5", "[strategy] fraction must be in (0, 1]"),
        (
            'name = "fedavg"',
            'name = "fedmedian"',
            "[aggregator] name: unknown aggregator 'fedmedian'",
        ),
        (
            "secagg = true",
            'secagg = "yes"',
            "secagg (true, false or a [secagg] table) must be a table",
        ),
        ('tags = ["#a", "#b"]', "tags = [1, 2]", "tags must be a list of strings"),
    ],
)
def test_invalid_values_name_the_file_block_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigurationError) as info:
        load_experiment_config(path).build_experiment(tmp_path / "out")
    message = str(info.value)
    assert str(path) in message or "plan.py" in message
    assert expected in message, message


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'tags = ["#a"]\n[plan]\nfile = "plan.py"\nclass = "TinyPlan"\n')
    with pytest.raises(ConfigurationError, match="missing required key 'rounds'"):
        load_experiment_config(path)


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'tags = ["#a"\nrounds = 1\n')
    with pytest.raises(ConfigurationError, match=r"is not valid TOML: .*line 2"):
        load_experiment_config(path)


def test_plan_raising_at_import_is_a_configuration_error(tmp_path: Path) -> None:
    path = write(tmp_path, VALID, plan="import not_a_module_anywhere\n")
    with pytest.raises(
        ConfigurationError, match=r"importing training plan file .* ModuleNotFoundError"
    ):
        load_experiment_config(path).build_experiment(tmp_path / "out")


def test_example_toml_builds(tmp_path: Path) -> None:
    exp = load_experiment_config(EXAMPLE / "experiment.toml").build_experiment(tmp_path / "out")
    assert exp.agg_optimizer().module_names == ["scaffold-server", "yogi"]
    assert exp.training_plan().optimizer_spec()["modules"][0][0] == "scaffold-client"


def test_cli_refuses_an_invalid_toml_with_the_key_and_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("lr = 0.5", "lr = -1"))
    proc = subprocess.run(
        fedloom_cmd(
            "researcher",
            "run",
            str(path),
            "--insecure",
            "--address",
            "127.0.0.1:0",
            "--out",
            str(tmp_path),
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "[agg_optimizer] lr must be positive, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tags_without_the_hash_mark_are_refused_in_python_and_toml(tmp_path: Path) -> None:
    from researcher.federated_workflows import Experiment

    with pytest.raises(ConfigurationError, match=r"must start with '#'.*'#heart'"):
        Experiment(tags=["heart"])
    toml = tmp_path / "exp.toml"
    toml.write_text('tags = ["heart"]\nrounds = 1\n[plan]\nfile = "p.py"\nclass = "P"\n')
    with pytest.raises(ConfigurationError, match=r"tags: tag 'heart' must start with '#'"):
        load_experiment_config(toml)
