"""Local and persistent parameters in the plan API and in the researcher's reply validation."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from common.data import DataManager
from common.errors import PlanError
from common.proto import fedloom_pb2 as pb
from common.training_args import TrainingArgs
from common.training_plans import FedSGDClassifier, TorchTrainingPlan
from common.training_plans.personalization import resolve_tags
from researcher.rounds import ModelTemplate, ReceivedReply
from researcher.rounds.reply import InvalidReplyError, decode_train_reply
from tests.conftest import plan_task

NAMES = ["body.0.weight", "body.0.bias", "head.weight", "head.bias", "headline.weight"]


class BodyHeadPlan(TorchTrainingPlan):
    """A two-part classifier whose head is local."""

    local_parameters = ("head",)

    def init_model(self):
        body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        return torch.nn.Sequential(OrderedDict(body=body, head=torch.nn.Linear(4, 2)))

    def training_data(self):
        raise NotImplementedError  # evaluated directly in these tests

    def training_step(self, data, target):
        return torch.nn.functional.cross_entropy(self.model()(data), target)


def _built(plan_class: type[TorchTrainingPlan]) -> TorchTrainingPlan:
    plan = plan_class()
    plan.post_init({}, TrainingArgs(random_seed=0))
    return plan


def test_module_name_pattern_tags_every_parameter_under_it_and_nothing_else() -> None:
    tags = resolve_tags("P", NAMES, ["head"], ["body.0.b*"])
    assert tags.local == {"head.weight", "head.bias"}
    assert tags.persistent == {"body.0.bias"}


def test_pattern_matching_no_parameter_is_refused_naming_it() -> None:
    with pytest.raises(PlanError, match=r"'classifier'.*matches no parameter"):
        resolve_tags("P", NAMES, ["classifier"], [])


def test_parameter_both_local_and_persistent_is_refused() -> None:
    with pytest.raises(PlanError, match="both local and persistent"):
        resolve_tags("P", NAMES, ["head"], ["head.bias"])


def test_plan_with_every_parameter_local_is_refused() -> None:
    with pytest.raises(PlanError, match="nothing would be federated"):
        resolve_tags("P", NAMES, ["*"], [])


def test_single_string_instead_of_a_tuple_is_refused_with_the_fix() -> None:
    with pytest.raises(PlanError, match=r"make it a tuple.*\('head',\)"):
        resolve_tags("P", NAMES, "head", [])


def test_unknown_pattern_fails_when_the_plan_is_built() -> None:
    class Typo(BodyHeadPlan):
        local_parameters = ("haed",)

    with pytest.raises(PlanError, match="'haed'"):
        _built(Typo)


def test_global_model_of_a_plan_lacks_its_local_parameters() -> None:
    plan = _built(BodyHeadPlan)
    assert set(plan.shared_parameters()) == {"body.0.weight", "body.0.bias"}
    assert set(plan.get_parameters()) == {*plan.shared_parameters(), "head.weight", "head.bias"}


def test_loading_a_global_model_keeps_the_local_parameters() -> None:
    plan = _built(BodyHeadPlan)
    head = plan.get_parameters()["head.weight"]
    body = {k: np.full_like(v, 0.5) for k, v in plan.shared_parameters().items()}
    plan.set_shared_parameters(body)
    after = plan.get_parameters()
    np.testing.assert_array_equal(after["head.weight"], head)
    np.testing.assert_array_equal(after["body.0.weight"], body["body.0.weight"])


def test_validation_reports_the_global_and_the_personalized_model() -> None:
    plan = _built(BodyHeadPlan)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    plan.training_data = lambda: DataManager(dataset=x, target=y)  # type: ignore[method-assign]
    plan.post_init(
        {}, TrainingArgs(random_seed=0, test_ratio=0.5, num_updates=1, test_on_global_updates=True)
    )
    own = {
        "head.weight": np.ones((2, 4), np.float32),
        "head.bias": np.array([5.0, -5.0], np.float32),
    }
    result = plan.run_local_training(plan.training_optimizer(), own)
    # The own head's bias predicts class 0 everywhere: accuracy is class 0's share of the test part.
    _, test = plan._load_training_data().split(0.5, 0)
    assert test is not None
    assert result.metrics["personalized_accuracy"] == pytest.approx(np.mean(test.targets == 0))
    assert "global_accuracy" in result.metrics


def test_scikit_learn_plan_with_tags_is_refused_clearly() -> None:
    class Tagged(FedSGDClassifier):
        local_parameters = ("intercept_",)

        def training_data(self):
            raise NotImplementedError

    with pytest.raises(PlanError, match="scikit-learn plans do not support"):
        Tagged().post_init({"n_features": 2, "n_classes": 2}, TrainingArgs())


# -- the researcher's side: replies without local parameters --------------------------


def _reply(params: dict[str, np.ndarray]) -> ReceivedReply:
    return ReceivedReply(
        "node-a",
        pb.TaskReply(ok=True, n_samples=10, losses=[0.1]),
        {pb.PAYLOAD_SECTION_PARAMS: params},
    )


def _decode(params: dict[str, np.ndarray], template: ModelTemplate) -> None:
    decode_train_reply(
        _reply(params), "a", "a", template, aux_modules=(), secure=False, params_masked=False
    )


def _template_and_full_params() -> tuple[ModelTemplate, dict[str, np.ndarray]]:
    plan = _built(BodyHeadPlan)
    template = ModelTemplate.of(plan.shared_parameters(), plan.parameter_tags().local)
    return template, plan.get_parameters()


def test_reply_without_local_parameters_is_accepted() -> None:
    template, params = _template_and_full_params()
    _decode({k: v for k, v in params.items() if not k.startswith("head")}, template)


def test_reply_carrying_a_local_parameter_is_refused_as_a_leak() -> None:
    template, params = _template_and_full_params()
    with pytest.raises(InvalidReplyError, match=r"sent local parameters \['head.bias'\]"):
        _decode({k: v for k, v in params.items() if k != "head.weight"}, template)


def test_reply_lacking_a_shared_parameter_is_still_refused() -> None:
    template, params = _template_and_full_params()
    shared = {k: v for k, v in params.items() if k.startswith("body") and k != "body.0.bias"}
    with pytest.raises(InvalidReplyError, match=r"missing \['body.0.bias'\]"):
        _decode(shared, template)


def test_local_parameters_with_scaffold_are_refused_before_any_round(
    researcher_address: str,
) -> None:
    from common.errors import ConfigurationError
    from common.optimizers.declearn import ScaffoldClientModule, ScaffoldServerModule
    from common.optimizers.optimizer import Optimizer
    from researcher.federated_workflows import Experiment

    class ScaffoldHeads(BodyHeadPlan):
        def init_optimizer(self):
            return Optimizer(lr=0.1, modules=[ScaffoldClientModule()])

    exp = Experiment(
        tags=["#t"],
        training_plan_class=ScaffoldHeads,
        round_limit=1,
        agg_optimizer=Optimizer(lr=1.0, modules=[ScaffoldServerModule()]),
        show_progress=False,
    )
    with pytest.raises(ConfigurationError, match=r"keeps parameters .*head.* local.*scaffold"):
        exp.run()


def test_probed_plan_file_gives_a_global_model_without_local_parameters() -> None:
    from researcher.plan_probe import PlanFile, probe_plan
    from tests.conftest import ROOT

    plan = PlanFile(ROOT / "examples" / "fedper" / "plan.py", "FedPerPlan")
    probed = probe_plan(plan, {"n_features": 8, "hidden": 16, "n_classes": 4}, {})
    assert set(probed.params) == {"body.0.weight", "body.0.bias"}
    assert probed.details.local == ("head.bias", "head.weight")
    assert set(probed.details.trainable) == {"body.0.weight", "body.0.bias"}


# -- the node's side: what a round loads, keeps and sends ----------------------------------

NODE_PLAN = """
from collections import OrderedDict

import numpy as np
import torch

from common.data import DataManager
from common.training_plans import TorchTrainingPlan


class KeepPlan(TorchTrainingPlan):
    local_parameters = ("head",)
    persistent_parameters = ("body.bias",)

    def init_model(self):
        return torch.nn.Sequential(
            OrderedDict(body=torch.nn.Linear(3, 4), head=torch.nn.Linear(4, 2))
        )

    def init_optimizer(self):
        return torch.optim.SGD(self.model().parameters(), lr=0.0)  # training changes nothing

    def training_data(self):
        table = np.loadtxt(self.dataset_path, delimiter=",", dtype=np.float32)
        return DataManager(dataset=table[:, :3], target=table[:, 3].astype(np.int64))

    def training_step(self, data, target):
        return torch.nn.functional.cross_entropy(self.model()(data), target)
"""


def _node_round(tmp_path, rnd: int, global_params: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """Run round `rnd` of KeepPlan as the node's plan process does; return (result, upload)."""
    from common.payload_files import read_payload_file, write_sections_file
    from node.worker import PLAN_PAYLOAD, run_task

    scratch = tmp_path / f"task-{rnd}"
    scratch.mkdir()
    (scratch / "plan.py").write_text(NODE_PLAN, encoding="utf-8")
    write_sections_file(scratch / "global.bin", {pb.PAYLOAD_SECTION_PARAMS: global_params})
    args = {"num_updates": 1, "random_seed": 0, "test_ratio": 0.5, "test_on_global_updates": True}
    task = plan_task(scratch, "KeepPlan", tmp_path / "data.csv", args, tmp_path / "state", rnd)
    result = run_task(task)
    upload = read_payload_file(scratch / PLAN_PAYLOAD).sections()[pb.PAYLOAD_SECTION_PARAMS]
    return result, {k: np.array(v) for k, v in upload.items()}


def _saved(tmp_path, rnd: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    from common.payload_files import read_payload_file

    path = tmp_path / "state" / f"round-{rnd:06d}" / "personal.bin"
    return {k: np.array(v) for k, v in read_payload_file(path).arrays().items()}


def test_node_sends_no_local_parameter_and_trains_from_its_own_persistent_copy(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    np.savetxt(tmp_path / "data.csv", np.column_stack([x, x[:, 0] > 0]), delimiter=",")

    def global_model() -> dict[str, np.ndarray]:
        return {
            "body.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "body.bias": rng.normal(size=4).astype(np.float32),
        }

    first, second = global_model(), global_model()
    result1, upload1 = _node_round(tmp_path, 1, first)
    assert result1.ok, result1.error
    assert set(upload1) == {"body.weight", "body.bias"}
    np.testing.assert_array_equal(upload1["body.bias"], first["body.bias"])  # round 1: global
    kept1 = _saved(tmp_path, 1)
    assert set(kept1) == {"head.weight", "head.bias", "body.bias"}

    result2, upload2 = _node_round(tmp_path, 2, second)
    assert result2.ok, result2.error
    assert set(upload2) == {"body.weight", "body.bias"}
    np.testing.assert_array_equal(upload2["body.weight"], second["body.weight"])
    # The persistent bias is the node's own, not the new global value; the head persisted.
    np.testing.assert_array_equal(upload2["body.bias"], kept1["body.bias"])
    kept2 = _saved(tmp_path, 2)
    np.testing.assert_array_equal(kept2["head.weight"], kept1["head.weight"])
    metrics = dict(result2.metrics)
    assert metrics["personalized_loss"] != metrics["global_loss"]
