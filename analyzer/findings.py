"""What rules produce: findings with a savings estimate and an optional fix; and what the engine
makes of a model (``ModelReport``), the data every reporter reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from convlint.sketch import Neighbourhood, Suggestion

if TYPE_CHECKING:
    from convlint.cost import ModelCost


# The least share of a layer's MACs a finding must promise (the rules) and a lossy rewrite must
# save (fix's --min-saving default): one that saves less is not worth making.
MIN_SAVING = 0.10


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class Applicability(str, Enum):
    """What `convlint fix` promises for a fix, as ruff's, with one value more because
    convlint's rewrites are exact or measured approximations.

    ``safe``: the same function up to float rounding (a fold); `fix` applies it always.
    ``approximate``: a factorization or a projection fitted within an error budget measured on
    calibration data; `fix` applies it only with real data (``--inputs``).
    ``unsafe``: changes the function; `fix` applies it only with ``--unsafe-fixes``.
    ``display-only``: `fix` does not rewrite it.
    """

    SAFE = "safe"
    APPROXIMATE = "approximate"
    UNSAFE = "unsafe"
    DISPLAY_ONLY = "display-only"

    @property
    def applied(self) -> str:
        """When `convlint fix` applies a fix of this applicability, as a finding's fix
        description ends."""
        return APPLIED[self]


APPLIED = {
    Applicability.SAFE: "applied by `convlint fix`",
    Applicability.APPROXIMATE: (
        "applied by `convlint fix` only with real calibration data (--inputs)"
    ),
    Applicability.UNSAFE: "applied by `convlint fix` only with --unsafe-fixes",
    Applicability.DISPLAY_ONLY: "not applied by `convlint fix`",
}


@dataclass(frozen=True)
class Estimate:
    """Cost of the affected nodes before and after the suggested design."""

    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    # The flagged layer's cost per pixel of its output, before and after (the seed's 589824·H·W).
    macs_per_output_pixel: int | None = None
    macs_per_output_pixel_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }
        if self.macs_per_output_pixel is not None:
            data["macs_per_output_pixel"] = self.macs_per_output_pixel
            data["macs_per_output_pixel_after"] = self.macs_per_output_pixel_after
        data.update(self.extra)
        return data


@dataclass(frozen=True)
class Fix:
    applicability: Applicability
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"applicability": self.applicability.value, "description": self.description}


def described_fix(applicability: Applicability, description: str) -> Fix:
    """A fix whose description ends with when `convlint fix` applies it."""
    return Fix(applicability, f"{description}; {applicability.applied}")


@dataclass(frozen=True)
class Finding:
    code: str
    rule: str
    severity: Severity
    node: str
    op_type: str
    message: str
    estimate: Estimate | None = None
    fix: Fix | None = None
    related: tuple[str, ...] = ()  # other nodes of the flagged neighbourhood, for reports
    suggestion: Suggestion | None = None  # the suggested design as labels (set by the rule)
    # The flagged neighbourhood as data for reports (set by the engine; not in the JSON report).
    context: Neighbourhood | None = field(default=None, compare=False)
    # What the rule's check matched, typed by the rule (a frozen dataclass of the nodes it
    # found through the view), for its rewrite to read rather than find the nodes again by
    # name. Kept only where `fix` plans (``engine.lint``); in no report, and never sent to
    # another process (it holds the graph's nodes): see ``__getstate__``.
    binding: object = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "rule": self.rule,
            "severity": self.severity.value,
            "node": self.node,
            "op_type": self.op_type,
            "message": self.message,
            "estimate": self.estimate.as_dict() if self.estimate else None,
            "fix": self.fix.as_dict() if self.fix else None,
        }

    def __getstate__(self) -> dict[str, Any]:
        """A pickled finding (what a worker of `check` sends back) leaves its binding out: it
        is what it was before bindings, and unpickled, its binding is the default None."""
        state = dict(self.__dict__)
        state.pop("binding", None)
        return state


class Skip(NamedTuple):
    """A candidate a rule looked at and passed over, and why (shown by --verbose).

    A NamedTuple rather than a frozen dataclass: as immutable, and three times quicker to
    create, which counts when a rule passes over each of a large graph's thousands of convs.
    """

    code: str
    node: str
    reason: str


__all__ = [
    "Applicability",
    "Estimate",
    "Finding",
    "Fix",
    "ModelReport",
    "Severity",
    "Skip",
    "asdict",
    "described_fix",
]


@dataclass
class ModelReport:
    """One model's report: what the engine found (``as_dict()`` is the JSON model object)."""

    path: str
    opset: int | None = None
    nodes: int = 0
    cost: ModelCost | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    skips: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # codes of the rules run on this model
    # Findings a --baseline knew, moved out of ``findings`` (None: no baseline given).
    baselined: list[Finding] | None = None
    # Findings silenced by their node's ``convlint.ignore`` metadata (the model's own noqa).
    suppressed: list[Finding] = field(default_factory=list)
    # Codes of the rules that raised on this model (its ``error`` names them); the other
    # rules' findings are still in ``findings``.
    failed_rules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "opset": self.opset,
            "nodes": self.nodes,
            "cost": self.cost.as_dict() if self.cost else None,
            "findings": [f.as_dict() for f in self.findings],
            "error": self.error,
        }
