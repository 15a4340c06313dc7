"""``segflow plan``: derive a training config from the dataset, the device and a time budget.

As in nnU-Net's experiment planning, the dataset is measured once (:mod:`segflow.data.fingerprint`)
and every setting is derived from that measurement by a small rule (:mod:`segflow.train.plan_rules`):
a pure function ``rule(ctx, chosen) -> Decision`` that reads the planning context (fingerprint,
device, budget, timings) and the settings chosen so far (dotted config keys), and returns the
config entries it sets with the reason. :class:`Planner` runs the rules of :data:`RULES` in
order; any of them can be replaced by name, and ``--set``-style values (``fixed``) win over every
rule, which then plan around them (``--set model.encoder=resnet34`` sizes batch and epochs for
resnet34). :class:`Plan` writes the result as a ``config.yaml`` with each reason above its keys.

Times come from :mod:`segflow.train.plan_cost`: a step's seconds are either measured on this
machine or read from a calibrated table, then padded by ``plan_rules.SAFETY``;
``train.max_minutes`` stops training at the budget whatever happens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segflow.config import SegflowConfig, parse_override
from segflow.data.fingerprint import Fingerprint
from segflow.errors import ConfigError, UnknownNameError, UsageError
from segflow.train.plan_cost import (
    DeviceInfo,
    MeasuredTimer,
    StepTimer,
    TableTimer,
    detect_device,
    format_seconds,
    parse_budget,
)
from segflow.train.plan_rules import (
    RULES,
    Decision,
    PlanContext,
    Rule,
    channels_of,
    default_settings,
)

__all__ = [
    "RULES",
    "Decision",
    "Plan",
    "PlanContext",
    "Planner",
    "Rule",
    "format_seconds",
    "parse_budget",
    "plan_dataset",
]

# ------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    """The decisions, the settings they add up to, and what they were made from."""

    decisions: dict[str, Decision]
    settings: dict[str, Any]
    fingerprint: Fingerprint
    device: DeviceInfo
    budget_s: float
    dataset: Path | None = None
    comments: dict[str, str] = field(default_factory=dict)  # dotted key -> the reason

    def nested(self) -> dict[str, Any]:
        """The settings as nested sections (what ``config.yaml`` holds)."""
        out: dict[str, Any] = {}
        for key, value in self.settings.items():
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out

    def config(self) -> SegflowConfig:
        """The validated config (defaults for every key the plan leaves alone)."""
        from pydantic import ValidationError

        from segflow.errors import validation_message

        try:
            return SegflowConfig.model_validate(self.nested())
        except ValidationError as exc:
            raise ConfigError(
                f"the plan is not a valid config: {validation_message(exc)}"
            ) from None

    def header(self) -> list[str]:
        """Lines summarising the fingerprint, the device and the budget."""
        fp = self.fingerprint
        dtypes = ", ".join(f"{k} x{v}" for k, v in fp.dtypes.items())
        lines = [
            f"dataset: {self.dataset or '-'}",
            f"budget: {format_seconds(self.budget_s)} on {self.device.name} "
            f"({self.device.memory_gb:.0f} GiB {'GPU' if self.device.kind == 'cuda' else 'RAM'})",
            f"images: {fp.num_images} ({fp.num_labelled} labelled, "
            f"{fp.empty_mask_share:.0%} of masks empty); size h {fp.height['min']:.0f}.."
            f"{fp.height['max']:.0f} (median {fp.height['median']:.0f}), w {fp.width['min']:.0f}.."
            f"{fp.width['max']:.0f} (median {fp.width['median']:.0f})",
            f"pixels: {channels_of(fp)} channel(s), {dtypes}, values {fp.value_range[0]:g}.."
            f"{fp.value_range[1]:g}, mean "
            + ", ".join(f"{m:.4g}" for m in fp.channel_mean)
            + ", std "
            + ", ".join(f"{s:.4g}" for s in fp.channel_std),
        ]
        for c in fp.classes:
            extra = (
                f", {c.objects} objects (median {c.median_object_area:.0f} px, p90 extent "
                f"{c.p90_object_extent:.0f} px), median width {c.median_width:.0f} px"
                if c.id != 0 and c.objects
                else ""
            )
            lines.append(f"class {c.id} {c.name}: {c.frequency:.2%} of pixels{extra}")
        return lines

    def to_yaml(self) -> str:
        """The commented config: the header, then each key with its reason above it."""
        from segflow._version import __version__

        lines = [f"# Planned by segflow {__version__} plan: every setting below says why.", "#"]
        lines += [f"# {line}" for line in self.header()]
        lines += [
            "#",
            "# Keys not listed keep their defaults (`segflow config show --defaults`);",
            "# change any with --set KEY=VALUE or by editing this file.",
            "",
        ]
        lines += _emit(self.nested(), self.comments, "", 0)
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_yaml` atomically; returns the path."""
        from segflow._io import atomic_write_text

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, self.to_yaml())
        return out

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """``(decision, settings, reason)`` for display."""
        for name, decision in self.decisions.items():
            shown = ", ".join(
                f"{k}={_flow(self.settings.get(k, v))}" for k, v in decision.settings.items()
            )
            yield name, shown, decision.reason


def _flow(value: Any) -> str:
    if isinstance(value, Path):
        value = value.as_posix()
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(
        text, width=width, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   "
    )


def _emit(
    node: Mapping[str, Any], comments: Mapping[str, str], prefix: str, depth: int
) -> list[str]:
    """YAML lines for a nested mapping, each key's reason above it (once per run of keys)."""
    indent = "  " * depth
    out: list[str] = []
    said = ""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted.count(".") < 2 and not _leaf_dict(dotted):
            out.append(f"{indent}{key}:")
            out += _emit(value, comments, dotted + ".", depth + 1)
            said = ""
            continue
        reason = comments.get(dotted, "")
        if reason and reason != said:
            out += _wrap(reason, indent)
        said = reason or said
        out.append(f"{indent}{key}: {_flow(value)}")
    return out


def _leaf_dict(dotted: str) -> bool:
    """Config keys whose value is itself a mapping (not a section)."""
    return dotted in ("model.kwargs", "loss.terms")


class Planner:
    """Runs the planning rules in order; any rule can be replaced by name.

    Args:
        rules: replacements, e.g. ``{"tile": lambda ctx, chosen: Decision({...}, "why")}``;
            names not in :data:`RULES` are errors. Rules are called in :data:`RULES` order.
    """

    def __init__(self, rules: Mapping[str, Rule] | None = None) -> None:
        self.rules = dict(RULES)
        for name, rule in (rules or {}).items():
            if name not in RULES:
                raise UnknownNameError(f"unknown planning rule {name!r}; valid: {', '.join(RULES)}")
            self.rules[name] = rule

    def plan(self, ctx: PlanContext) -> Plan:
        """Apply every rule; user-fixed settings win and are noted in the reasons."""
        chosen: dict[str, Any] = dict(ctx.fixed)
        settings: dict[str, Any] = {}
        comments: dict[str, str] = {}
        decisions: dict[str, Decision] = {}
        if ctx.dataset is not None:
            settings["data.dataset"] = Path(ctx.dataset).resolve().as_posix()
            comments["data.dataset"] = "the dataset this plan was made for"
        for name, rule in self.rules.items():
            decision = rule(ctx, chosen)
            own = dict(decision.settings)
            mine = [k for k in own if k in ctx.fixed]
            reason = decision.reason
            if mine:
                changed = [k for k in mine if own[k] != ctx.fixed[k]]
                planned = ", ".join(f"{k}={_flow(own[k])}" for k in changed)
                note = f" (the plan had {planned})" if changed else ""
                reason = f"{', '.join(mine)} set by you{note}; {reason}"
                own.update({k: ctx.fixed[k] for k in mine})
            decisions[name] = Decision(own, reason)
            for key, value in own.items():
                chosen[key] = value
                settings[key] = value
                comments[key] = reason
        for key, value in ctx.fixed.items():
            if key not in settings:
                settings[key] = value
                comments[key] = "set by you"
        ordered = _config_order(settings, [k for d in decisions.values() for k in d.settings])
        return Plan(
            decisions=decisions,
            settings=ordered,
            fingerprint=ctx.fingerprint,
            device=ctx.device,
            budget_s=ctx.budget_s,
            dataset=ctx.dataset,
            comments=comments,
        )


def _config_order(settings: Mapping[str, Any], decided: Sequence[str]) -> dict[str, Any]:
    """Settings by config section, then in the order the rules decided them.

    The keys of one decision stay together; ``data.dataset`` comes first, keys no rule set last.
    """
    sections: dict[str, int] = {}
    for key in default_settings():
        sections.setdefault(key.rsplit(".", 1)[0], len(sections))
    rank = {key: i for i, key in enumerate(["data.dataset", *decided])}

    def sort_key(item: tuple[str, Any]) -> tuple[int, int]:
        section = item[0].rsplit(".", 1)[0]
        return sections.get(section, len(sections)), rank.get(item[0], len(rank))

    return dict(sorted(settings.items(), key=sort_key))


def split_counts(dataset: Any, labelled: int) -> tuple[int, int]:
    """Train and validation images from ``splits.csv``, or the runner's 80/20 default."""
    splits = dataset.splits()
    stems = {s.stem for s in dataset.labelled_samples()}
    if splits:
        rows = [r for r in splits.values() if r.stem in stems]
        train = sum(1 for r in rows if r.split == "train")
        val = sum(1 for r in rows if r.split == "val")
        if train:
            return train, val
    val = round(0.2 * labelled)
    return max(1, labelled - val), val


def parse_fixed(overrides: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dotted settings, checked against the config's keys."""
    from segflow.config import load_config

    load_config(None, overrides)  # unknown keys and bad values fail here, with did-you-mean
    fixed: dict[str, Any] = {}
    for item in overrides:
        keys, value = parse_override(item)
        fixed[".".join(keys)] = value
    return fixed


def plan_dataset(
    dataset: str | os.PathLike[str],
    *,
    budget: str | float = "10m",
    device: str = "auto",
    overrides: Sequence[str] = (),
    timing: Literal["measure", "table"] = "measure",
    rules: Mapping[str, Rule] | None = None,
    spent_s: float = 0.0,
    progress: bool = False,
) -> Plan:
    """Fingerprint ``dataset`` and plan for ``device`` within ``budget``.

    Args:
        dataset: the canonical dataset folder.
        budget: wall-clock time for the training run: ``"10m"``, ``"1h30m"``... or seconds.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``KEY=VALUE`` settings the plan must keep (and plan around).
        timing: ``measure`` step times on this machine, or use the calibrated ``table``.
        rules: replacement rules by name (see :class:`Planner`).
        spent_s: seconds of the budget already used (planning inside ``segflow train``); the
            plan's own scanning and measuring time is added to it.
        progress: show a progress bar while scanning.
    """
    from segflow.data.dataset import CanonicalDataset
    from segflow.data.fingerprint import fingerprint_dataset

    start = time.monotonic()
    budget_s = parse_budget(budget) if isinstance(budget, str) else float(budget)
    if budget_s <= 0:
        raise UsageError(f"budget {budget!r}: must be longer than 0 seconds")
    if timing not in ("measure", "table"):
        raise UsageError(f"timing {timing!r}: use measure or table")
    fixed = parse_fixed(overrides)
    ds = CanonicalDataset(dataset)
    fp = fingerprint_dataset(ds, progress=progress)
    dev = detect_device(device)
    train_n, val_n = split_counts(ds, fp.num_labelled)
    timer: StepTimer = (
        MeasuredTimer(dev) if timing == "measure" and dev.present else TableTimer(dev)
    )
    planner = Planner(rules)

    def context(spent: float) -> PlanContext:
        return PlanContext(
            fingerprint=fp,
            device=dev,
            budget_s=max(budget_s - spent, 0.25 * budget_s),
            train_images=train_n,
            val_images=val_n,
            timer=timer,
            dataset=Path(dataset),
            fixed=fixed,
        )

    plan = planner.plan(context(spent_s))
    if spent_s:  # timing ran inside the first pass: plan again with the time it took
        plan = planner.plan(context(spent_s + time.monotonic() - start))
        plan.budget_s = budget_s
    return plan
