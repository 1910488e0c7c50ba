"""The workload format: one YAML file that drives `pdserve bench` now and the simulator later.

Strict on purpose: a misspelt key in a benchmark silently changes what is measured, so every
unknown key or bad value is an error naming its path (`arrival.rate: must be > 0`).
Lengths are in tokens (see `text.py` for how text is made to that length).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pdserve.errors import UserError
from pdserve.validation_errors import Wording, path_of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- arrival -------------------------------------------------------------------------------


class Poisson(_Strict):
    """Independent users: exponential gaps, the usual open-loop load."""

    process: Literal["poisson"]
    rate: float = Field(gt=0, description="requests per second")


class Constant(_Strict):
    """Evenly spaced arrivals: the least noisy load, for comparing two services."""

    process: Literal["constant"]
    rate: float = Field(gt=0, description="requests per second")


class Bursts(_Strict):
    """`size` requests every `period` seconds, spaced `1/rate` apart inside a burst.

    The mean rate is `size / period`; `--rate` sets that mean by changing the period."""

    process: Literal["bursts"]
    rate: float = Field(gt=0, description="requests per second inside a burst")
    size: int = Field(gt=0)
    period: float = Field(gt=0, description="seconds from one burst's start to the next")

    @model_validator(mode="after")
    def _fits(self) -> Bursts:
        if (self.size - 1) / self.rate > self.period:
            raise ValueError("a burst (size / rate) must fit in its period")
        return self


Arrival = Annotated[Poisson | Constant | Bursts, Field(discriminator="process")]


# -- lengths -------------------------------------------------------------------------------


class Fixed(_Strict):
    dist: Literal["fixed"]
    value: int = Field(ge=0)


class Uniform(_Strict):
    """Integers in [min, max], both included."""

    dist: Literal["uniform"]
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.min > self.max:
            raise ValueError("min must be <= max")
        return self


class Normal(_Strict):
    """Clipped to [min, max] rather than resampled, so the mean shifts a little when the
    bounds bite; the bounds are there to keep requests inside the model's context."""

    dist: Literal["normal"]
    mean: float = Field(ge=0)
    std: float = Field(ge=0)
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=0)


class LogNormal(_Strict):
    """Real chat traffic: most answers short, a long tail. `mean` is the mean in tokens
    (not of the logarithm) so the file reads in the same units as the others; `sigma` is
    the log-space standard deviation (0.5: moderate tail, 1: heavy)."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=0)


Distribution = Annotated[Fixed | Uniform | Normal | LogNormal, Field(discriminator="dist")]


def _fixed_shorthand(value: Any) -> Any:
    """`output_tokens: 128` means `{dist: fixed, value: 128}`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"dist": "fixed", "value": value}
    return value


# -- request shapes ------------------------------------------------------------------------


class SharedPrefix(_Strict):
    """llm-d's shared-prefix benchmark: `groups` long common prefixes (a system prompt, a
    document) each followed by a short distinct suffix (the question). Each request joins a
    group chosen uniformly at random, so prefix-aware routing has something to win."""

    groups: int = Field(gt=0)
    prefix_tokens: int = Field(gt=0)
    suffix_tokens: Distribution

    _shorthand = field_validator("suffix_tokens", mode="before")(_fixed_shorthand)


class Chat(_Strict):
    """Multi-turn conversations. `conversations` are open at a time and take arrivals in
    turn, so one conversation's next turn comes `conversations` arrivals after its last
    (time to read the answer) rather than on top of it. With `history`, each turn resends
    every earlier message; the earlier answers are planned text of their `max_tokens`, as
    the generator cannot know what the service will say."""

    turns: int = Field(default=1, gt=0)
    history: bool = True
    conversations: int = Field(default=8, gt=0)


class Adapter(_Strict):
    """One entry of the LoRA mix; no `name` is the base model (`--model`)."""

    name: str | None = None
    weight: float = Field(gt=0)


LABEL_MAX = 64


class TraceRecord(_Strict):
    """A line of a replay trace: seconds from any origin, and the input as a length or text.
    `label` is the class the request is reported under (the report's `classes`), so a trace
    that mixes two kinds of request can be read per kind instead of as one bimodal mix."""

    timestamp: float = Field(ge=0)
    input_tokens: int | None = Field(default=None, ge=0)
    text: str | None = None
    output_tokens: int = Field(gt=0)
    model: str | None = None
    label: str | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, label: str | None) -> str | None:
        """A label becomes a JSON key and a line of the printed summary: short and free of
        control characters, so both stay readable and the summary one line per class."""
        if label is None:
            return None
        if not label:
            raise ValueError("must not be empty")
        if len(label) > LABEL_MAX:
            raise ValueError(f"must be at most {LABEL_MAX} characters, got {len(label)}")
        if any(unicodedata.category(c) == "Cc" for c in label):
            raise ValueError(f"must not contain control characters, got {label!r}")
        return label

    @model_validator(mode="after")
    def _one_input(self) -> TraceRecord:
        if (self.input_tokens is None) == (self.text is None):
            raise ValueError("give exactly one of input_tokens and text")
        return self


class Replay(_Strict):
    """Requests at a trace's timestamps (divided by `speed`) instead of an arrival process.

    `file` (JSONL) is read when the workload loads, relative to the workload file, so the
    generator stays free of I/O; `records` holds the lines."""

    file: str
    speed: float = Field(default=1.0, gt=0)
    records: tuple[TraceRecord, ...] = ()


class Workload(_Strict):
    """What is sent, when. `arrival` is required unless `replay` gives the times;
    `input_tokens` is required unless `shared_prefix` or `replay` gives the inputs."""

    api: Literal["chat", "completions"] = "chat"
    arrival: Arrival | None = None
    input_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    shared_prefix: SharedPrefix | None = None
    chat: Chat | None = None
    lora: tuple[Adapter, ...] = ()
    replay: Replay | None = None
    ignore_eos: bool = Field(
        default=True,
        description="ask the engine to produce exactly max_tokens (vLLM's extension), so the "
        "output lengths are the workload's and not the model's",
    )

    _shorthand = field_validator("input_tokens", "output_tokens", mode="before")(_fixed_shorthand)

    @model_validator(mode="after")
    def _complete(self) -> Workload:
        if self.replay is not None:
            for key in ("arrival", "input_tokens", "output_tokens", "shared_prefix", "chat"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: not allowed with replay (the trace gives it)")
            return self
        if self.arrival is None:
            raise ValueError("arrival: required (or give replay)")
        if self.output_tokens is None:
            raise ValueError("output_tokens: required")
        if self.shared_prefix is not None and self.input_tokens is not None:
            raise ValueError("input_tokens: not allowed with shared_prefix (it gives the input)")
        if self.shared_prefix is None and self.input_tokens is None:
            raise ValueError("input_tokens: required (or give shared_prefix)")
        if self.chat is not None and self.api != "chat":
            raise ValueError("chat: needs api: chat")
        return self

    def with_rate(self, rate: float) -> Workload:
        """The same workload at another mean rate (`--rate`)."""
        if rate <= 0:
            raise UserError(f"--rate must be > 0, got {rate}")
        if self.replay is not None:
            raise UserError("--rate: a replay workload takes its times from the trace")
        assert self.arrival is not None
        arrival: Poisson | Constant | Bursts
        if isinstance(self.arrival, Bursts):
            arrival = self.arrival.model_copy(update={"period": self.arrival.size / rate})
            if (arrival.size - 1) / arrival.rate > arrival.period:
                arrival = arrival.model_copy(update={"rate": rate * arrival.size})
        else:
            arrival = self.arrival.model_copy(update={"rate": rate})
        return self.model_copy(update={"arrival": arrival})


# -- loading -------------------------------------------------------------------------------


_TAGS = {"poisson", "constant", "bursts", "fixed", "uniform", "normal", "lognormal"}


WORDING = Wording(
    {
        "extra_forbidden": "unknown key",
        "missing": "required",
        "union_tag_invalid": "must be one of {expected_tags}, got {tag!r}",
        "union_tag_not_found": "needs {discriminator}",
        "greater_than": "must be > {gt}, got {input!r}",
        "greater_than_equal": "must be >= {ge}, got {input!r}",
        "less_than": "must be < {lt}, got {input!r}",
    },
    lower=True,
)


def problem(where: str, err: ValidationError) -> str:
    """One error as one line, `where: path: message`: an unknown key first, as a misspelt
    key also makes the key it meant missing, and the misspelling is what to fix."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = path_of(tuple(first["loc"]), skip=_TAGS)
    msg = WORDING.describe(first)
    if not path and ": " in msg:  # model-level checks name their key in the message
        path, msg = msg.split(": ", 1)
    return f"{where}: {path}: {msg}" if path else f"{where}: {msg}"


def parse(doc: Any, where: str = "workload") -> Workload:
    if not isinstance(doc, dict):
        raise UserError(f"{where}: expected a mapping, got {type(doc).__name__}")
    try:
        return Workload.model_validate(doc)
    except ValidationError as err:
        raise UserError(problem(where, err)) from None


def _trace(path: Path, where: str) -> tuple[TraceRecord, ...]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"{where}: replay.file: cannot read {path}: {err.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        at = f"{path}:{number}"
        try:
            records.append(TraceRecord.model_validate(json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(f"{at}: not JSON: {err.msg}") from None
        except ValidationError as err:
            raise UserError(problem(at, err)) from None
    if not records:
        raise UserError(f"{path}: the trace has no records")
    return tuple(records)


def load(path: str | Path) -> Workload:
    """A workload file, its replay trace read in."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not YAML: {str(err).splitlines()[0]}") from None
    workload = parse(doc, str(path))
    if workload.replay is not None:
        if workload.replay.records:
            raise UserError(f"{path}: replay.records: unknown key (give replay.file)")
        trace = path.parent / workload.replay.file
        replay = workload.replay.model_copy(update={"records": _trace(trace, str(path))})
        workload = workload.model_copy(update={"replay": replay})
    return workload
