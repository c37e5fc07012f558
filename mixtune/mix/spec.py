"""The mix: how much domain data, and how the rest splits over curated categories.

Config sections ``mix`` (a ``MixSpec``), ``catalog`` (a YAML file of categories)
and ``categories`` (the catalog itself, inline). Plain pydantic and YAML only:
``mixtune.config`` imports this module, never the other way round.

How a run config names its catalog::

    catalog: catalog-offline.yaml   # relative to the config file; loaded first
    categories:                     # inline; a name here REPLACES the file's category
      my-support-tickets:           #   of that name, a new name adds a category
        - {name: tickets, uri: ../data/tickets.jsonl, license: internal}
    mix: {domain_percent: 75, weights: {math: 2, my-support-tickets: 1}}

After ``load_config`` the ``categories`` field holds the merged catalog (file
first, then inline), so the resolved config, its dump and every cache key see
the sources actually used, not a path to them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from mixtune.errors import ConfigError, read_yaml, validation_problem
from mixtune.sections import SourceConfig, StrictModel, seed_field

DOMAIN = "domain"  # the category name the manifest gives domain sources; reserved
CATEGORY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

# The cloud SDK's 23 published Nova categories -> mixtune catalog categories.
# Its reasoning-* categories hold data with written-out reasoning for each
# capability; mixtune's `reasoning` category is chain-of-thought data with
# rationales, so all nine go there (write the native form for finer control).
# `identity` (a consistent persona) is closest to chat; `rai` is `safety`;
# `agents` and `planning` share `planning-agents`; `baseline` (general language
# comprehension) is `general`. Several Nova keys landing on one category add up.
NOVA_CATEGORY_MAP: dict[str, str] = {
    "agents": "planning-agents",
    "baseline": "general",
    "chat": "chat",
    "code": "code",
    "factuality": "factuality",
    "identity": "chat",
    "instruction-following": "instruction-following",
    "long-context": "long-context",
    "math": "math",
    "planning": "planning-agents",
    "rag": "rag",
    "rai": "safety",
    "stem": "stem",
    "translation": "translation",
    **{f"reasoning-{c}": "reasoning" for c in (
        "chat", "code", "factuality", "instruction-following", "math", "planning", "rag",
        "rai", "stem",
    )},
}
NOVA_CUSTOMER_KEY = "customer_data_percent"
NOVA_SUM_TOLERANCE = 0.01  # the SDK's own tolerance for "sums to 100"
_NOVA_KEY = re.compile(r"nova_(.+)_percent")
# Keys a Nova-form mix may carry besides the percentages (they are mixtune's own).
_PASSTHROUGH_KEYS = ("unit", "batching", "seed", "warn_repeat_factor")


MAX_WEIGHT = 1e6  # weights are relative: a ratio beyond a million to one is a typo, and 1e308 + 1e308 overflows


def _finite_non_negative(v: float) -> float:
    if not math.isfinite(v) or not 0 <= v <= MAX_WEIGHT:
        raise ValueError(f"a weight must be a finite number >= 0 and <= {MAX_WEIGHT:g}, got {v}")
    return v


# allow_inf_nan here only lets the check below give its own message, which states the range.
Weight = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_finite_non_negative)]


class MixSpec(StrictModel):
    """What share of every global batch comes from where.

    The contract, which ``mixtune.mix.manifest.build_manifest`` implements exactly:

    - ``domain_percent`` in (0, 100] of every batch is domain data, split among
      the domain sources in proportion to their size (train rows; train tokens
      when ``unit`` is tokens). 100 is the control run: domain data only, and
      ``weights`` are then ignored.
    - The rest is split among categories by ``weights``: relative, any
      non-negative finite numbers, normalized to sum to 1. A zero weight leaves
      the category out (it need not even exist in the catalog). Within a
      category, its sources share in proportion to their size, so every source
      of a group is used up at the same rate.
    - ``unit: samples`` counts rows; ``unit: tokens`` counts each row's
      ``num_tokens``, so a category of long rows gets fewer rows. Every batch
      still holds exactly ``global_batch_size`` rows.
    - Stratified batching: every batch holds the planned count from every
      source. Counts are rounded so that after ANY prefix of batches each
      source's cumulative count is within 1 row of its exact share (in token
      units: within the tokens of one row, the longest in the mix).
    - A source smaller than its planned count is repeated in whole seeded
      epochs (each a fresh seeded permutation) plus a seeded partial epoch; the
      manifest records each source's repeat factor and warns above
      ``warn_repeat_factor``.
    - Same spec, same data fingerprints, same seed: byte-identical manifest
      (given the same numpy and polars versions). A longer run extends the
      manifest without changing its prefix.

    The cloud SDK's form (``customer_data_percent`` plus ``nova_<category>_percent``
    keys) is accepted as-is and translated; see ``translate_nova_form``.
    """

    domain_percent: float = Field(
        100.0, allow_inf_nan=True,  # refused by the check below, with a message stating the range
        description="percent of every batch from the domain data, in (0, 100]"
    )
    weights: dict[str, Weight] = Field(
        default_factory=dict, description=f"category -> relative weight in [0, {MAX_WEIGHT:g}], normalized"
    )
    unit: Literal["samples", "tokens"] = Field("samples", description="what shares count")
    batching: Literal["stratified"] = "stratified"
    seed: int = seed_field("every source's row order")
    warn_repeat_factor: float = Field(
        4.0, gt=0, le=1e6, description="warn when a source is repeated more often than this, in (0, 1e6]"
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_nova_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and is_nova_form(data):
            return translate_nova_form(data)
        return data

    @field_validator("domain_percent")
    @classmethod
    def _domain_percent_in_range(cls, v: float) -> float:
        if not math.isfinite(v) or not 0 < v <= 100:
            raise ValueError(f"must be a number in (0, 100], got {v}")
        return v

    @field_validator("weights")
    @classmethod
    def _domain_is_not_a_category(cls, weights: dict[str, float]) -> dict[str, float]:
        if DOMAIN in weights:
            raise ValueError(f"'{DOMAIN}' is not a category: set domain_percent instead")
        return weights

    @model_validator(mode="after")
    def _categories_get_a_share(self) -> "MixSpec":
        if self.domain_percent < 100 and not self.category_weights():
            raise ValueError(
                f"domain_percent is {self.domain_percent:g} but no category has a positive weight; "
                "give at least one category a weight > 0, or set domain_percent: 100 (domain only)"
            )
        return self

    def category_weights(self) -> dict[str, float]:
        """Categories that take part, with weights normalized to sum to 1 (empty at 100%)."""
        if self.domain_percent >= 100:
            return {}
        positive = {name: w for name, w in self.weights.items() if w > 0}
        total = sum(positive.values())
        return {name: w / total for name, w in sorted(positive.items())}


# --- the cloud SDK's form ---


def is_nova_form(data: dict[str, Any]) -> bool:
    return NOVA_CUSTOMER_KEY in data or any(_NOVA_KEY.fullmatch(str(k)) for k in data)


def translate_nova_form(data: dict[str, Any]) -> dict[str, Any]:
    """``customer_data_percent`` + ``nova_<category>_percent`` -> native fields.

    Stricter than the SDK on purpose: a missing ``customer_data_percent`` is an
    error (not a silent 0), an unknown category is an error listing the known
    ones, and a mix below 100% customer data without any Nova keys is an error
    (the SDK would fall back to a default distribution behind the user's back).
    As in the SDK, the Nova values are shares of the non-customer part and must
    sum to 100 within 0.01; values may be numbers or numeric strings (the SDK's
    hyperparameters are strings). Every problem is reported at once.
    """
    problems: list[str] = []
    native_keys = sorted(k for k in ("domain_percent", "weights") if k in data)
    if native_keys:
        problems.append(f"{', '.join(native_keys)}: do not mix the native form with "
                        f"{NOVA_CUSTOMER_KEY}/nova_*_percent keys; use one form")
    unknown_keys = sorted(
        str(k) for k in data
        if k not in (NOVA_CUSTOMER_KEY, *_PASSTHROUGH_KEYS, "domain_percent", "weights")
        and not _NOVA_KEY.fullmatch(str(k))
    )
    if unknown_keys:
        problems.append(f"{', '.join(unknown_keys)}: unknown key(s) in a Nova-form mix")

    customer = None
    if NOVA_CUSTOMER_KEY not in data:
        problems.append(f"{NOVA_CUSTOMER_KEY}: missing (mixtune never assumes 0)")
    else:
        customer = _percent(data[NOVA_CUSTOMER_KEY], NOVA_CUSTOMER_KEY, problems)
        if customer is not None and not 0 < customer <= 100:
            problems.append(f"{NOVA_CUSTOMER_KEY}: must be in (0, 100], got {customer:g}"
                            + (" (Nova data only has no domain data to tune on)" if customer == 0 else ""))
            customer = None

    nova: dict[str, float] = {}
    for key in sorted(str(k) for k in data):
        match = _NOVA_KEY.fullmatch(key)
        if not match:
            continue
        category = match.group(1)
        if category not in NOVA_CATEGORY_MAP:
            problems.append(f"{key}: unknown Nova category {category!r}; known: "
                            + ", ".join(sorted(NOVA_CATEGORY_MAP)))
            continue
        value = _percent(data[key], key, problems)
        if value is not None and value < 0:
            problems.append(f"{key}: must be >= 0, got {value:g}")
        elif value is not None:
            nova[category] = value

    if customer is not None and customer < 100 and not nova and not problems:
        problems.append(
            f"{NOVA_CUSTOMER_KEY} is {customer:g} but no nova_<category>_percent keys are given; "
            "list the categories (their values sum to 100) - mixtune does not guess a distribution"
        )
    if nova and not problems:
        total = sum(nova.values())
        if abs(total - 100) > NOVA_SUM_TOLERANCE:
            hint = ""
            if customer is not None and abs(customer + total - 100) <= NOVA_SUM_TOLERANCE:
                hint = (f"; they are shares of the non-customer part, so scale them by "
                        f"{100 / total:g} (customer + nova adding to 100 is not the SDK's form)")
            problems.append(f"nova_*_percent values must sum to 100 (within {NOVA_SUM_TOLERANCE}), "
                            f"got {total:g}{hint}")
    if problems:
        raise ValueError("; ".join(problems))

    weights: dict[str, float] = {}
    for category, value in nova.items():
        target = NOVA_CATEGORY_MAP[category]
        weights[target] = weights.get(target, 0.0) + value
    native = {k: data[k] for k in _PASSTHROUGH_KEYS if k in data}
    return {**native, "domain_percent": customer, "weights": dict(sorted(weights.items()))}


def _percent(value: Any, key: str, problems: list[str]) -> float | None:
    """A number or numeric string; None (and a problem) otherwise."""
    if isinstance(value, bool):
        problems.append(f"{key}: expected a number, got {value!r}")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{key}: expected a number, got {value!r}")
        return None
    if not math.isfinite(number):
        problems.append(f"{key}: must be a finite number, got {value!r}")
        return None
    return number


# --- the catalog: category -> sources ---


def _check_catalog(categories: dict[str, list[SourceConfig]]) -> dict[str, list[SourceConfig]]:
    problems = []
    for name, sources in categories.items():
        if name == DOMAIN or not CATEGORY_NAME.fullmatch(name):
            problems.append(f"category {name!r}: use lowercase letters, digits, '-' or '_' "
                            f"(and not '{DOMAIN}')")
        if not sources:
            problems.append(f"category {name!r}: has no sources")
    seen: dict[str, str] = {}
    for name, sources in categories.items():
        for src in sources:
            if src.name in seen:
                problems.append(f"source {src.name!r} is in both {seen[src.name]!r} and {name!r}; "
                                "source names must be unique (they name the source in the manifest)")
            seen[src.name] = name
    if problems:
        raise ValueError("; ".join(problems))
    return categories


CategoryCatalog = Annotated[dict[str, list[SourceConfig]], AfterValidator(_check_catalog)]


class CatalogFile(StrictModel):
    """A catalog YAML file: ``categories: {name: [source, ...]}``."""

    categories: CategoryCatalog


def load_catalog(path: str | Path) -> dict[str, list[SourceConfig]]:
    """Read a catalog file; relative local URIs resolve against the file's folder."""
    path = Path(path)
    data = read_yaml(path, "catalog")
    try:
        catalog = CatalogFile.model_validate(data).categories
    except ValidationError as exc:
        raise ConfigError([validation_problem(e) for e in exc.errors()], str(path)) from None
    base = path.parent.resolve()
    for sources in catalog.values():
        for src in sources:
            src.uri = resolve_local(src.uri, base)
    return catalog


def merge_catalogs(
    from_file: dict[str, list[SourceConfig]], inline: dict[str, list[SourceConfig]]
) -> dict[str, list[SourceConfig]]:
    """File categories, then inline ones: an inline category replaces the file's whole list."""
    return _check_catalog({**from_file, **inline})


def resolve_local(uri: str, base: Path) -> str:
    """Absolute path for a relative local path; URIs (s3://, hf://, ...) unchanged."""
    is_local = "://" not in uri and not uri.startswith("hf:")
    return str((base / uri).resolve()) if is_local and not Path(uri).is_absolute() else uri


def check_mix_against_catalog(
    mix: MixSpec, categories: dict[str, list[SourceConfig]], domain_source_names: list[str],
    planned_samples: int | None = None,
) -> list[str]:
    """Problems (as 'key.path: message') between a mix, its catalog and the domain sources.

    With ``planned_samples`` (max_steps x global_batch_size) and ``unit: samples``,
    the domain must get at least one sample: a share that rounds to nothing
    (``domain_percent: 1e-300``) is refused, not trained as 0. A weighted
    category that gets none is a warning of the plan and the run log instead
    (``MixUnsampledWarning``): the run is still what the user asked for.
    """
    problems = []
    if planned_samples is not None and mix.unit == "samples":
        domain_samples = mix.domain_percent / 100 * planned_samples
        if domain_samples < 1:
            problems.append(
                f"mix.domain_percent: gives {domain_samples:.3g} of the {planned_samples:,} planned samples "
                f"(train.max_steps x train.global_batch_size); raise it so the domain gets at least one sample")
    known = ", ".join(sorted(categories)) or "(none: set catalog or categories)"
    for name in sorted(mix.category_weights()):
        if name not in categories:
            problems.append(f"mix.weights.{name}: unknown category; known: {known}")
    catalog_sources = {s.name: c for c, sources in categories.items() for s in sources}
    for name in domain_source_names:
        if name in catalog_sources:
            problems.append(f"data.sources: name {name!r} is also a source of category "
                            f"{catalog_sources[name]!r}; rename one")
    return problems


def resolve_catalog(cfg: Any, base: Path) -> None:
    """Part of ``load_config``: merge the catalog file into ``cfg.categories``, check the mix.

    Takes the config object untyped because ``mixtune.config`` imports this module.
    Idempotent: a dumped config (merged categories, absolute catalog path) reloads the same.
    """
    for sources in cfg.categories.values():
        for src in sources:
            src.uri = resolve_local(src.uri, base)
    if cfg.catalog:
        cfg.catalog = resolve_local(cfg.catalog, base)
        try:
            cfg.categories = merge_catalogs(load_catalog(cfg.catalog), cfg.categories)
        except (ValueError, ValidationError) as exc:
            raise ConfigError([f"categories: {exc}"]) from None
    train = cfg.train
    planned = train.max_steps * train.global_batch_size if train.max_steps is not None else None
    problems = check_mix_against_catalog(cfg.mix, cfg.categories, [s.name for s in cfg.data.sources], planned)
    if problems:
        raise ConfigError(problems)


# --- shares ---


def source_fractions(spec: MixSpec, sizes: dict[str, tuple[str, float]]) -> dict[str, float]:
    """Each taking-part source's exact share of the mix; the shares sum to 1.

    ``sizes`` maps source name -> (category or "domain", size), size in the mix's
    unit (train rows, or train tokens). Domain sources share ``domain_percent``,
    categories share the rest by normalized weight, and the sources of one group
    share its part in proportion to their size. Sources of categories with no
    weight are left out; so are sources of size 0. Problems are raised together.
    """
    domain_fraction = spec.domain_percent / 100
    groups = {DOMAIN: domain_fraction}
    groups.update({c: (1 - domain_fraction) * w for c, w in spec.category_weights().items()})
    problems, fractions = [], {}
    for group, group_fraction in groups.items():
        members = {name: size for name, (cat, size) in sizes.items() if cat == group}
        total = sum(members.values())
        if not members:
            problems.append("no domain source given" if group == DOMAIN else
                            f"category {group!r} has weight but no sources")
        elif not total > 0:
            problems.append(f"{'domain' if group == DOMAIN else 'category ' + repr(group)} "
                            "has no rows left to mix")
        else:
            fractions.update({name: group_fraction * size / total
                              for name, size in members.items() if size > 0})
    if problems:
        raise ValueError("; ".join(problems))
    return dict(sorted(fractions.items()))
