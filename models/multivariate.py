"""Groups of series scored together: river's Half-Space Trees over min-max scaled features."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from river import anomaly, preprocessing


@dataclass
class _Group:
    """One group's river models, plus what is needed to rebuild them."""

    members: tuple[str, ...]
    scaler: preprocessing.MinMaxScaler
    trees: anomaly.HalfSpaceTrees
    #: Scaled samples the trees learned since the start of the last complete
    #: window (which holds the reference masses), one row per sample, NaN
    #: where a member was missing.
    history: list[np.ndarray] = field(default_factory=list)
    learned: int = 0


class GroupHalfSpaceTrees:
    """Half-Space Trees over a *group* of series sampled at the same moments.

    Each group (say the five latency series of one service) has its own
    ``preprocessing.MinMaxScaler | anomaly.HalfSpaceTrees`` from river; a
    sample is the dict ``{series_name: value}`` of the group at one timestamp.
    HST partitions the unit cube at random and scores a point by how little of
    the last window's mass fell near it, so a point that breaks the usual
    relation between the members (one goes up while the others go down)
    scores high even when each value on its own is ordinary.  The scaler keeps
    each member's running min and max, since HST expects features in [0, 1].

    The score is HST's raw one, ``1 - mass / max_mass`` (higher = more
    anomalous): not a probability, and not comparable between groups of
    different sizes; the engine's calibrator turns it into one.

    A group's members are the finite features of its first sample; later
    features outside them are ignored (start a new group to change members).
    NaN or infinite values are dropped from the sample, and HST routes a
    missing member down the heavier branch.

    Warm-up is explicit: HST has no reference mass until its first window of
    ``window_size`` samples is complete, so until then the score is 0.0 and
    :meth:`warming` is true.

    State round trip, honestly: river's models are object graphs that only
    pickle would serialise, and pickle is not an acceptable storage format.
    The trees themselves are a deterministic function of the seed and the
    member names, and their masses are counts of the scaled samples in the
    last complete window and the current partial one.  So the state is the
    scaler's min and max per member, and those scaled samples (at most
    ``2 * window_size - 1`` rows per group), and :meth:`load_state_dict`
    rebuilds the scaler from its min and max and replays the samples into
    fresh trees with the same seed: the rebuilt model scores exactly as the
    original did.  One detail relies on how river routes a missing feature
    (down the heavier child): the first replayed sample must carry every
    member so the trees are built over all of them, and a member missing from
    it is replayed as ``-inf``, which takes the left child just as the
    original did when all masses were still zero.  The round-trip test guards
    this against a change in river.

    Parameters
    ----------
    n_trees
        Trees per group.
    height
        Height of each tree.
    window_size
        Samples per reference window (and in the warm-up).
    seed
        Seeds the trees; each group's trees use this and a stable hash of the
        group's name, so the same name always gets the same trees.

    Examples
    --------
    >>> import numpy as np
    >>> model = GroupHalfSpaceTrees(window_size=100, seed=1)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(300):
    ...     load = rng.normal()
    ...     sample = {"a": load, "b": load + rng.normal(0, 0.1), "c": -load}
    ...     _ = model.score_and_learn("api", sample)
    >>> normal = model.score_and_learn("api", {"a": 1.0, "b": 1.0, "c": -1.0}, learn=False)
    >>> broken = model.score_and_learn("api", {"a": 1.0, "b": 1.0, "c": 1.0}, learn=False)
    >>> bool(broken > normal), model.warming("api"), model.n_groups
    (True, False, 1)
    """

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 250, seed: int = 0) -> None:
        if n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError(
                f"n_trees, height and window_size must be positive, got {n_trees}, {height}, {window_size}"
            )
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self._groups: dict[str, _Group] = {}

    @property
    def n_groups(self) -> int:
        return len(self._groups)

    def warming(self, group: str) -> bool:
        """True until ``group`` has learned its first full window."""
        known = self._groups.get(group)
        return known is None or known.learned < self.window_size

    def _new_group(self, name: str, members: tuple[str, ...]) -> _Group:
        group_seed = (self.seed ^ zlib.crc32(name.encode())) & 0x7FFFFFFF
        trees = anomaly.HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=group_seed
        )
        return _Group(members, preprocessing.MinMaxScaler(), trees)

    def score_and_learn(self, group: str, features: dict[str, float], learn: bool = True) -> float:
        """HST's raw score for this sample of ``group``, then learn from it.

        The score comes from the scaler and trees as they were before this
        sample, so a point is never judged against itself.
        """
        known = self._groups.get(group)
        finite = {k: float(v) for k, v in features.items() if math.isfinite(v)}
        if known is None:
            if not finite or not learn:
                return 0.0
            known = self._groups[group] = self._new_group(group, tuple(sorted(finite)))
        x = {k: v for k, v in finite.items() if k in known.members}
        if not x:
            return 0.0
        score = 0.0
        if known.learned >= self.window_size:
            score = float(known.trees.score_one(known.scaler.transform_one(x)))
        if learn:
            known.scaler.learn_one(x)
            scaled = known.scaler.transform_one(x)
            known.trees.learn_one(scaled)
            known.history.append(np.array([scaled.get(m, np.nan) for m in known.members]))
            known.learned += 1
            if known.learned % self.window_size == 0:
                # A window just closed: it holds the reference masses now,
                # everything before it is no longer needed to rebuild them.
                known.history = known.history[-self.window_size :]
        return score

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays: parameters, group names, and per group ``g{i}.*``."""
        names = list(self._groups)
        state: dict[str, np.ndarray] = {
            "params": np.array([self.n_trees, self.height, self.window_size, self.seed], dtype=np.int64),
            "groups": np.array(names, dtype=str),
        }
        for i, name in enumerate(names):
            known = self._groups[name]
            width = len(known.members)
            state[f"g{i}.members"] = np.array(known.members, dtype=str)
            state[f"g{i}.min"] = np.array([known.scaler.min[m].get() for m in known.members])
            state[f"g{i}.max"] = np.array([known.scaler.max[m].get() for m in known.members])
            state[f"g{i}.history"] = np.array(known.history, dtype=np.float64).reshape(-1, width)
            state[f"g{i}.learned"] = np.array(known.learned, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild every group from :meth:`state_dict`'s arrays (see the class notes)."""
        params = [int(v) for v in np.asarray(state["params"])]
        ours = [self.n_trees, self.height, self.window_size, self.seed]
        if params != ours:
            raise ValueError(
                f"state was saved with (n_trees, height, window_size, seed) = {tuple(params)}, "
                f"this model has {tuple(ours)}; construct it with the saved parameters "
                "or start the groups cold"
            )
        groups: dict[str, _Group] = {}
        for i, name in enumerate(np.asarray(state["groups"]).tolist()):
            members = tuple(np.asarray(state[f"g{i}.members"]).tolist())
            known = self._new_group(name, members)
            known.scaler.learn_one(dict(zip(members, np.asarray(state[f"g{i}.min"]).tolist(), strict=True)))
            known.scaler.learn_one(dict(zip(members, np.asarray(state[f"g{i}.max"]).tolist(), strict=True)))
            history = np.asarray(state[f"g{i}.history"], dtype=np.float64)
            known.learned = int(state[f"g{i}.learned"])
            full = self.window_size if known.learned >= self.window_size else 0
            if len(history) != full + known.learned % self.window_size:
                raise ValueError(
                    f"group {name!r}: {len(history)} stored samples do not match "
                    f"{known.learned} learned with window_size {self.window_size}; "
                    "the state is damaged, start this group cold"
                )
            for j, row in enumerate(history):
                sample = {m: v for m, v in zip(members, row.tolist(), strict=True) if not math.isnan(v)}
                if j == 0:
                    sample = {m: sample.get(m, -math.inf) for m in members}
                known.trees.learn_one(sample)
                known.history.append(row.copy())
            groups[name] = known
        self._groups = groups

    def __repr__(self) -> str:
        return (
            f"GroupHalfSpaceTrees(n_trees={self.n_trees}, height={self.height}, "
            f"window_size={self.window_size}, seed={self.seed})"
        )
