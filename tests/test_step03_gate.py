"""Step 03's evaluation gate keeps its own copy of the kit's price table (the step folder must work on
its own, e.g. as a learner's service repository): the copy must not drift from coursekit/data/models.toml,
or the gate's cost would differ from what the simulator's tokens cost."""

import tomllib

from coursekit import REPO_ROOT
from coursekit.simulator.models import known_models, price_for


def test_step03_price_table_equals_the_kits():
    for folder in ("solutions", "steps"):
        path = REPO_ROOT / folder / "03-cicd" / "eval" / "prices.toml"
        with open(path, "rb") as fh:
            copy = tomllib.load(fh)["models"]
        assert set(copy) == set(known_models()), f"{path}: 모델 목록이 coursekit/data/models.toml 과 다름"
        for model, p in copy.items():
            kit = price_for(model)
            assert (p["input_usd_per_1m"], p["output_usd_per_1m"]) == (kit.input_usd_per_1m, kit.output_usd_per_1m), (
                f"{path}: {model} 단가가 coursekit/data/models.toml 과 다름")
