"""Out-of-fold calibration: presets land where the curve says, caution is chosen on held-out rows, artifacts keep it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.base import Router
from routers.objective import Calibration
from tests.test_knn import _clusters
from training.calibrate import fit_calibrated, preset_summary


def test_a_fitted_router_carries_a_monotone_curve_whose_presets_keep_their_targets() -> None:
    ds = _clusters(n_per=60)
    ds.quality[:, 1] = 1.0  # 'strong' is right everywhere, 'cheap' only on the easy cluster
    router = fit_calibrated("knn", ds, {"k": 5})
    calibration = Calibration.of(router)
    curve = calibration.curve
    assert curve is not None and list(curve.lambdas) == sorted(curve.lambdas) and curve.lambdas[0] == 0.0
    presets = preset_summary(router)
    assert presets["balanced"]["oof_quality_fraction"] >= 0.97 and presets["cost-first"]["oof_quality_fraction"] >= 0.9
    # the clusters are separable: routing keeps the quality and saves most of the strong model's cost
    assert presets["balanced"]["oof_cost_fraction"] < 0.7
    assert calibration.member_quality == {"cheap": 0.5, "strong": 1.0}


def test_a_router_that_learns_nothing_useful_is_held_to_the_best_single_choice() -> None:
    ds = _clusters(n_per=60)
    rng = np.random.default_rng(0)
    ds.quality = (rng.random(ds.quality.shape) < np.array([0.3, 0.8])).astype(float)  # labels unrelated to text
    router = fit_calibrated("knn", ds, {"k": 1})
    # following k=1 noise loses quality out of fold, so caution at lambda 0 keeps the best single model
    assert Calibration.of(router).caution > 0


def test_the_calibration_survives_the_artifact(tmp_path: Path) -> None:
    router = fit_calibrated("knn", _clusters(), {"k": 3})
    loaded = Router.load(router.save(tmp_path / "knn.router"))
    assert loaded.calibration_ == router.calibration_
