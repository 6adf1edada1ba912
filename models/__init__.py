"""Online univariate models: each series' normal behaviour, learned as it streams.

The contract: a model forecasts what each series should look like next and
reports how far an observed point is from that, as a signed deviation in units
of the series' own scale.  Normal observations get small deviations, anomalies
large ones.  Models never threshold and never produce probabilities;
``detector.calibration`` turns deviations into calibrated tail probabilities.

Every model keeps its state in numpy arrays with one row per series, so one call
updates many series (the engine's hot path), and a model with arrays of length
one is the one-sample path.  State round-trips through plain arrays, no pickle.
"""

from models.auto import AutoModel
from models.base import Assessment, OnlineModel
from models.changepoint import LevelShift
from models.ewma import RobustEWMA
from models.multivariate import GroupHalfSpaceTrees
from models.quantile import RobustQuantile
from models.routine import DailyRoutine
from models.seasonal import SeasonalProfile, detect_period

__all__ = [
    "Assessment",
    "AutoModel",
    "DailyRoutine",
    "GroupHalfSpaceTrees",
    "LevelShift",
    "OnlineModel",
    "RobustEWMA",
    "RobustQuantile",
    "SeasonalProfile",
    "detect_period",
]
