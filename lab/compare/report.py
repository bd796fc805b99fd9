"""The results file of `forsaken.lab.compare`: its schema, its targets, and its Markdown rendering.

Pure functions of the JSON document, so the test can check them without Flower installed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# One entry per measurement; `null` where a field does not apply.
SCENARIO_KEYS = (
    "name",
    "params",
    "clients",
    "secure",
    "forsaken_round_s",
    "flower_round_s",
    "forsaken_completed",
    "flower_completed",
    "forsaken_acc",
    "flower_acc",
)
TOP_KEYS = ("flower_version", "scenarios")
SCENARIOS = ("round-overhead", "secure-round", "dropout", "training", "unlearning")
# Scenario 5's own fields, each a `spread` object: ForgetMe's and retraining's costs.
UNLEARNING_SPREADS = (
    "forget_wall_s",
    "retrain_wall_s",
    "forget_client_grad_evals",
    "retrain_client_grad_evals",
)

# The bars.
SECURE_SPEEDUP = 5.0
ACC_AGREEMENT = 0.01  # one percentage point
UNLEARN_GRAD_FRACTION = 0.1  # ForgetMe's client gradient evaluations ≤ 1/10 of retraining's


@dataclass(frozen=True, slots=True)
class Target:
    scenario: str
    what: str
    met: bool | None  # None: not measured (a system failed, or the scenario did not run)
    detail: str


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median and spread (min, max) of repeated measurements."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def validate(doc: Any) -> list[str]:
    """Problems with a results document; empty when it follows the schema."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["the document is not a JSON object"]
    problems += [f"missing top-level key {k!r}" for k in TOP_KEYS if k not in doc]
    scenarios = doc.get("scenarios")
    if not isinstance(scenarios, list):
        return [*problems, "scenarios is not a list"]
    for i, entry in enumerate(scenarios):
        where = f"scenarios[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} is not an object")
            continue
        problems += [f"{where} lacks {k!r}" for k in SCENARIO_KEYS if k not in entry]
        if entry.get("name") not in SCENARIOS:
            problems.append(f"{where}: unknown scenario name {entry.get('name')!r}")
        if not isinstance(entry.get("params"), dict):
            problems.append(f"{where}: params must be an object")
        for key in ("forsaken_round_s", "flower_round_s", "forsaken_acc", "flower_acc"):
            value = entry.get(key)
            if value is not None and not isinstance(value, int | float):
                problems.append(f"{where}: {key} must be a number or null")
        for key in ("forsaken_completed", "flower_completed", "secure"):
            value = entry.get(key)
            if value is not None and not isinstance(value, bool):
                problems.append(f"{where}: {key} must be a boolean or null")
        if entry.get("name") == "unlearning":
            problems += _spread_problems(entry, where)
    return problems


def _spread_problems(entry: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key in UNLEARNING_SPREADS:
        s = entry.get(key)
        if not isinstance(s, dict) or not isinstance(s.get("n"), int):
            problems.append(f"{where}: {key} must be a spread object (median, min, max, n)")
            continue
        for part in ("median", "min", "max"):
            value = s.get(part)
            if value is not None and not isinstance(value, int | float):
                problems.append(f"{where}: {key}.{part} must be a number or null")
    return problems


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def targets(doc: dict[str, Any]) -> list[Target]:
    """Each bar of the issue, checked against the measured medians."""
    out: list[Target] = []
    for e in doc["scenarios"]:
        ours, theirs = e["forsaken_round_s"], e["flower_round_s"]
        label = f"{_size(e['params'].get('model_params'))}, N={e['clients']}"
        if e["name"] == "round-overhead":
            met = None if ours is None or theirs is None else ours <= theirs
            out.append(
                Target("1", f"plaintext round ≤ Flower's ({label})", met, _pair(ours, theirs))
            )
        elif e["name"] == "secure-round":
            speedup = _ratio(theirs, ours)
            met = None if speedup is None else speedup >= SECURE_SPEEDUP
            detail = _pair(ours, theirs) + (f", {speedup:.1f}x" if speedup else "")
            out.append(
                Target("2", f"secure round ≥ {SECURE_SPEEDUP:g}x faster ({label})", met, detail)
            )
        elif e["name"] == "dropout":
            done = e["forsaken_completed"]
            out.append(
                Target(
                    "3",
                    f"our round completes after a dropout (N={e['clients']})",
                    done,
                    f"forsaken: {_done(done)}; Flower: {_done(e['flower_completed'])}",
                )
            )
        elif e["name"] == "training":
            a, b = e["forsaken_acc"], e["flower_acc"]
            met = None if a is None or b is None else abs(a - b) <= ACC_AGREEMENT + 1e-9
            mode = "secure" if e["secure"] else "plaintext"
            detail = "" if met is None else f"{a:.4f} vs {b:.4f}"
            out.append(Target("4", f"accuracies agree within 1 point ({mode})", met, detail))
        elif e["name"] == "unlearning":
            out.append(_unlearning_target(e))
    return out


def _unlearning_target(e: dict[str, Any]) -> Target:
    forget = _median(e, "forget_client_grad_evals")
    retrain = _median(e, "retrain_client_grad_evals")
    # A product, not a ratio: it stays defined when either count is zero.
    met = None if forget is None or retrain is None else forget <= UNLEARN_GRAD_FRACTION * retrain
    detail = "not measured"
    if met is not None:
        share = _ratio(forget, retrain)
        detail = f"ForgetMe {_count(forget)} vs retrain {_count(retrain)} gradient evaluations"
        detail += f" ({share:.3g}x retraining's)" if share is not None else ""
        wall_f, wall_r = _median(e, "forget_wall_s"), _median(e, "retrain_wall_s")
        speedup = _ratio(wall_r, wall_f)
        detail += f"; wall time {_s(wall_f)} vs {_s(wall_r)}"
        detail += f" (retraining takes {speedup:.1f}x as long)" if speedup is not None else ""
    what = f"ForgetMe uses ≤ 1/{1 / UNLEARN_GRAD_FRACTION:g} of retraining's client gradient"
    return Target("5", f"{what} evaluations (N={e['clients']})", met, detail)


def _size(n: int | None) -> str:
    if n is None:
        return "mnist5k MLP"
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M params"
    return f"{n / 1000:g}k params"


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _pair(ours: float | None, theirs: float | None) -> str:
    return f"forsaken {_s(ours)} vs Flower {_s(theirs)}"


def _done(value: bool | None) -> str:
    return {True: "completed", False: "did not complete", None: "not run"}[value]


def _spread_cell(entry: dict[str, Any], system: str) -> str:
    s = entry.get(f"{system}_round_s_spread")
    if not s or s.get("median") is None:
        return _s(entry.get(f"{system}_round_s"))
    return f"{_s(s['median'])} [{s['min']:.3g}-{s['max']:.3g}] x{s['n']}"


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _bound(value: float) -> str:
    return f"{value:.3g}"


def _spread_of(
    entry: dict[str, Any],
    key: str,
    fmt: Callable[[float | None], str] = _s,
    bound: Callable[[float], str] = _bound,
) -> str:
    """A spread field as the other tables show one: `median [min-max] xN`."""
    s = entry.get(key)
    if not isinstance(s, dict) or s.get("median") is None:
        return "—"
    return f"{fmt(s['median'])} [{bound(s['min'])}-{bound(s['max'])}] x{s['n']}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}x"


def _unlearning_section(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## 5. Unlearning (forsaken only; Flower has no unlearning)",
        "",
        "Client 0 (holding the backdoor test bed) asks to forget all its data after T rounds; "
        "ForgetMe (method `forsaken`) against the server's `retrain` (roll back to before "
        "client 0's first contribution and retrain without it), both through the real "
        "daemons (mutual TLS, secure aggregation) as `forsaken evaluate` runs them.",
        "",
        "| dataset | N | T | local epochs | ForgetMe wall | retrain wall | retrain / ForgetMe | "
        "ForgetMe client grad evals | retrain client grad evals | retrain / ForgetMe | "
        "ForgetMe acc | retrain acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        p = e["params"]
        wall = _ratio(_median(e, "retrain_wall_s"), _median(e, "forget_wall_s"))
        evals = _ratio(
            _median(e, "retrain_client_grad_evals"), _median(e, "forget_client_grad_evals")
        )
        lines.append(
            f"| {p.get('dataset')} | {e['clients']} | {p.get('rounds')} | "
            f"{p.get('local_epochs')} | {_spread_of(e, 'forget_wall_s')} | "
            f"{_spread_of(e, 'retrain_wall_s')} | {_times(wall)} | "
            f"{_spread_of(e, 'forget_client_grad_evals', _count, _count)} | "
            f"{_spread_of(e, 'retrain_client_grad_evals', _count, _count)} | {_times(evals)} | "
            f"{_acc(e['forsaken_acc'])} | {_acc(e.get('retrain_acc'))} |"
        )
    lines += [
        "",
        "Wall: from the start of the first round after the request to the receipt (server "
        "clock). Client grad evals: per-sample gradient evaluations as `forsaken evaluate` "
        "counts them (COST_BASIS): the forgetting client's unlearning steps plus every "
        "client's training in recovery rounds; for retrain, every retraining round's training. "
        "Acc: test accuracy of the model the receipt names. The wall-time ratio is smaller "
        "than the work ratio: a ForgetMe round waits for the forgetting client's generator "
        "training on one core, while a retraining round's training runs on the other clients in "
        "parallel and each takes a fraction of a second on this small model. Retraining's wall "
        "time grows with T; ForgetMe's number of rounds does not.",
        "",
    ]
    return lines


def render(doc: dict[str, Any]) -> str:
    """The generated Markdown page: header, one table per scenario, the targets, notes."""
    problems = validate(doc)
    if problems:
        raise ValueError("invalid results: " + "; ".join(problems))
    host = doc.get("host", {})
    lines = [
        "# forsaken against Flower",
        "",
        "<!-- Generated by `make bench-compare` (python -m forsaken.lab.compare); do not edit. -->",
        "",
        f"- Flower: `flwr` {doc['flower_version']} in its deployment mode (a `flower-superlink`, "
        "one `flower-supernode` per client, a ServerApp/ClientApp pair started with `flwr run`; "
        "no simulation engine).",
        f"- Host: {host.get('cpus', '?')} CPUs, AES-256-CTR keystream "
        f"{host.get('aes_ctr_gb_s', '?')} GB/s (one core), {host.get('platform', '')}.",
        f"- Run: {doc.get('started', '?')}, mode `{doc.get('mode', '?')}`, "
        f"{doc.get('repetitions', '?')} repetition(s) per measurement, both systems interleaved "
        "in the same run on loopback. Cells are median [min-max] xrepetitions.",
        "",
        "Reading the numbers: in deployment mode Flower 1.42 starts a fresh ClientApp process "
        "per client for every round (Python, its imports and the model), so its round time has "
        "a floor of seconds that grows with N on 2 cores; forsaken's clients are long-lived "
        "daemons, so its round time is the model hand-out, the uploads and aggregation, and the "
        "gap narrows as the model grows (10M parameters). In scenario 3 both systems were "
        "given the same stage timeout, and forsaken treats the killed client as dropped only "
        "at that stage's deadline, so its time to the completed round is about the timeout.",
        "",
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for e in doc["scenarios"]:
        by_name.setdefault(e["name"], []).append(e)
    if "round-overhead" in by_name:
        lines += [
            "## 1. Round overhead (plaintext, light clients: no training)",
            "",
            "| model | N | forsaken round | Flower round | Flower / forsaken |",
            "|---|---|---|---|---|",
        ]
        for e in by_name["round-overhead"]:
            r = _ratio(e["flower_round_s"], e["forsaken_round_s"])
            lines.append(
                f"| {_size(e['params']['model_params'])} | {e['clients']} | "
                f"{_spread_cell(e, 'forsaken')} | {_spread_cell(e, 'flower')} | "
                f"{'—' if r is None else f'{r:.1f}x'} |"
            )
        lines.append("")
    if "secure-round" in by_name:
        lines += [
            "## 2. Secure aggregation (SecAgg+ against forsaken's SecAgg+, light clients)",
            "",
            "| model | N | shares / threshold | forsaken round | Flower round | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for e in by_name["secure-round"]:
            r = _ratio(e["flower_round_s"], e["forsaken_round_s"])
            p = e["params"]
            lines.append(
                f"| {_size(p['model_params'])} | {e['clients']} | k={p.get('neighbors')}, "
                f"t={p.get('threshold')} (Flower num_shares={p.get('num_shares')}) | "
                f"{_spread_cell(e, 'forsaken')} | {_spread_cell(e, 'flower')} | "
                f"{'—' if r is None else f'{r:.1f}x'} |"
            )
        lines.append("")
    if "dropout" in by_name:
        lines += [
            "## 3. A client killed after sharing keys, during a secure round",
            "",
            "| model | N | stage timeout | forsaken | time to completed round | Flower | "
            "time to completed round |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in by_name["dropout"]:
            p = e["params"]
            lines.append(
                f"| {_size(p['model_params'])} | {e['clients']} | {p.get('stage_timeout_s')} s | "
                f"{_done(e['forsaken_completed'])} | {_spread_cell(e, 'forsaken')} | "
                f"{_done(e['flower_completed'])} | {_spread_cell(e, 'flower')} |"
            )
        lines.append("")
    if "training" in by_name:
        lines += [
            "## 4. Realistic training (mnist5k, MLP, local training)",
            "",
            "| aggregation | N | rounds | forsaken: finish | Flower: finish | forsaken round | "
            "Flower round | forsaken acc | Flower acc |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in by_name["training"]:
            p = e["params"]
            lines.append(
                f"| {'secure' if e['secure'] else 'plaintext'} | {e['clients']} | "
                f"{p.get('rounds')} | {_s(_median(e, 'forsaken_total_s'))} | "
                f"{_s(_median(e, 'flower_total_s'))} | {_spread_cell(e, 'forsaken')} | "
                f"{_spread_cell(e, 'flower')} | {_acc(e['forsaken_acc'])} | "
                f"{_acc(e['flower_acc'])} |"
            )
        lines += [
            "",
            "Finish: wall time from starting the processes (server and clients; SuperLink, "
            "SuperNodes and `flwr run`) until the last round's model exists.",
            "",
        ]
    if "unlearning" in by_name:
        lines += _unlearning_section(by_name["unlearning"])
    else:
        lines += [
            "## 5. Unlearning (forsaken only; Flower has no unlearning)",
            "",
            "Not measured in this run (`--scenarios 5` measures it).",
            "",
        ]
    lines += ["## Targets", ""]
    for t in targets(doc):
        mark = {True: "PASS", False: "MISS", None: "NOT MEASURED"}[t.met]
        lines.append(f"- **{mark}** — scenario {t.scenario}: {t.what}: {t.detail}")
    lines.append("")
    notes = doc.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _median(entry: dict[str, Any], key: str) -> float | None:
    s = entry.get(key)
    if isinstance(s, dict):
        return s.get("median")
    return s
