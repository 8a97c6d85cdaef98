"""The node's warm process imports what every task would otherwise import for itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from common.training_plans import framework_plan_modules


def test_warm_up_imports_the_framework_plans_that_load_lazily() -> None:
    # In a fresh interpreter: this pytest process may have imported them already.
    script = textwrap.dedent(
        """
        import json, sys
        import common.training_plans
        before = [m for m in common.training_plans.framework_plan_modules() if m in sys.modules]
        from node.worker import warm_up
        warm_up()
        after = [m for m in common.training_plans.framework_plan_modules() if m in sys.modules]
        print(json.dumps({"before": before, "after": after}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["before"] == []  # lazily loaded: importing the package does not load them
    assert result["after"] == framework_plan_modules()
    assert "common.training_plans.torch_plan" in result["after"]
