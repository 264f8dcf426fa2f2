"""The calibration CSV behind the DVC reliability plot."""

import numpy as np
import pandas as pd

from bartops.reward.pipeline import write_calibration_csv
from bartops.reward.train import classification_metrics


def test_calibration_csv_has_every_models_bins(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.5, 5000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    models = {"xgboost": classification_metrics(y, p), "popularity": classification_metrics(y, 0 * p + 0.2)}
    path = write_calibration_csv(models, tmp_path / "reports" / "calibration.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["model", "predicted", "observed", "count"]
    assert table.groupby("model")["count"].sum().to_dict() == {"popularity": 5000, "xgboost": 5000}
    xgb = table[table["model"] == "xgboost"]
    # calibrated predictions: each bin's observed rate within 4 binomial SEs of its mean prediction
    se = np.sqrt(xgb["predicted"] * (1 - xgb["predicted"]) / xgb["count"])
    assert (np.abs(xgb["observed"] - xgb["predicted"]) < 4 * se).all()
    assert not list(tmp_path.joinpath("reports").glob(".*tmp"))
