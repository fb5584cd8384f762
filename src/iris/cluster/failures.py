"""Failure rules (DESIGN §4, "What a failure means"): which exits mean what, how long a retry
waits, and when failures are the same failure. Pure values and functions, used by the spec (to
validate), the controller core (to decide) and the CLI (to parse).

- ``ExitRule``: exit codes ``low..high`` (as a shell reports them: a death by signal N is 128+N)
  and an action: ``fail-job`` (the job fails now), ``failure`` (the default: the failure budget),
  ``preemption`` (the preemption budget: retried, still bounded).
- ``retry_delay_ms``: the k-th failure retry waits ``base * 2**(k-1)``, capped at 10 minutes, with
  a deterministic jitter (from the task id and k) so a gang of retries does not stampede.
- ``failure_signature``: an error's last line with numbers, paths, addresses and hex ids
  normalised, so "4 of 64 tasks failed with the same error" is recognised.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FAIL_JOB = "fail-job"
FAILURE = "failure"
PREEMPTION = "preemption"
ACTIONS = (FAIL_JOB, FAILURE, PREEMPTION)
MAX_EXIT_RULES = 64
MAX_RETRY_DELAY_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class ExitRule:
    low: int
    high: int
    action: str

    def matches(self, exit_code: int) -> bool:
        return self.low <= exit_code <= self.high

    def codes_text(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    def describe(self) -> str:
        return f"--on-exit {self.codes_text()}={self.action}"


def parse_exit_rules(texts: Iterable[str]) -> tuple[ExitRule, ...]:
    """``["2=fail-job", "75,143=preemption", "3-5=failure"]`` -> rules. Raises ValueError naming
    the bad part."""
    rules: list[ExitRule] = []
    for text in texts:
        codes, sep, action = text.partition("=")
        action = action.strip()
        if not sep or not codes.strip():
            raise ValueError(f"--on-exit {text!r}: expected CODES=ACTION, e.g. 2=fail-job or 75,143=preemption")
        if action not in ACTIONS:
            raise ValueError(f"--on-exit {text!r}: action must be one of {', '.join(ACTIONS)}, not {action!r}")
        for part in codes.split(","):
            low_text, dash, high_text = part.strip().partition("-")
            try:
                low = int(low_text)
                high = int(high_text) if dash else low
            except ValueError:
                raise ValueError(f"--on-exit {text!r}: {part.strip()!r} is not an exit code or range (e.g. 3-5)") \
                    from None
            rules.append(ExitRule(low, high, action))
    return tuple(rules)


def check_exit_rules(rules: Sequence[ExitRule]) -> str:
    """Why these rules are invalid ("" when they are valid)."""
    if len(rules) > MAX_EXIT_RULES:
        return f"at most {MAX_EXIT_RULES} rules, got {len(rules)}"
    for rule in rules:
        if not (0 <= rule.low <= rule.high <= 255):
            return f"{rule.codes_text()}: exit codes are 0..255, low <= high"
        if rule.action not in ACTIONS:
            return f"{rule.codes_text()}: action must be one of {', '.join(ACTIONS)}, not {rule.action!r}"
        if rule.low == 0:
            return "0: exit code 0 is success, not a failure"
    return ""


def rule_for(rules: Sequence[ExitRule], exit_code: int | None) -> ExitRule | None:
    """The first rule matching ``exit_code`` (None: no rule, or no exit code). A death by signal N,
    which a worker reports as -N, matches 128+N."""
    if exit_code is None:
        return None
    if exit_code < 0:
        exit_code = 128 - exit_code  # killed by signal N (a negative return code): 128+N, as a shell says
    for rule in rules:
        if rule.matches(exit_code):
            return rule
    return None


def retry_delay_ms(base_s: float, retry: int, key: str) -> int:
    """How long the ``retry``-th failure retry (1-based) waits: ``base * 2**(retry-1)``, capped at
    10 minutes, times a jitter in [0.8, 1.0] fixed by ``key`` and ``retry`` (deterministic)."""
    if base_s <= 0 or retry < 1:
        return 0
    delay = min(base_s * 1000 * (2 ** min(retry - 1, 30)), MAX_RETRY_DELAY_MS)
    digest = hashlib.blake2b(f"{key}/{retry}".encode(), digest_size=2).digest()
    jitter = 0.8 + 0.2 * (int.from_bytes(digest, "big") / 0xFFFF)
    return int(delay * jitter)


_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-fA-F:]+\](?::\d+)?")
_PATH = re.compile(r"(?<![\w.])(?:/[\w.@+-]+)+/?")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+")


def failure_signature(error: str | None) -> str:
    """The error's last non-empty line, normalised: addresses, paths, hex ids and numbers replaced."""
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1][:500]
    line = _ADDRESS.sub("<addr>", line)
    line = _PATH.sub("<path>", line)
    line = _HEX.sub("<hex>", line)
    return _NUMBER.sub("<n>", line)


MEMORY_KILL_PREFIXES = ("killed: out of memory", "killed: memory")
"""How a worker's error starts when it killed a task for exceeding its memory limit."""


def is_memory_kill(error: str | None) -> bool:
    """Whether Iris killed the attempt for memory (a failure, whatever the exit rules say)."""
    return bool(error) and error.startswith(MEMORY_KILL_PREFIXES)  # type: ignore[union-attr]


def last_line(error: str | None, limit: int = 1024) -> str:
    """An error's last non-empty line, at most ``limit`` bytes (for IRIS_PREVIOUS_ERROR)."""
    if not error:
        return ""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    text = lines[-1].strip() if lines else ""
    data = text.encode()[:limit]
    return data.decode(errors="ignore")


__all__ = [
    "ACTIONS",
    "FAILURE",
    "FAIL_JOB",
    "PREEMPTION",
    "ExitRule",
    "check_exit_rules",
    "failure_signature",
    "is_memory_kill",
    "last_line",
    "parse_exit_rules",
    "retry_delay_ms",
    "rule_for",
]
