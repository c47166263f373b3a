"""The verdict in plain sentences: the report's first lines, the CLI's summary, the model card.

Why apart from `analysis.verdict`: the verdict is numbers, computed once; how they are said is
report content, and every place that says it (HTML, Markdown, terminal, model card) reads
these functions, so the wording cannot differ between them.
"""

from __future__ import annotations

import math
from typing import Any

from calmerge.analysis.pareto import point_label
from calmerge.analysis.verdict import Verdict


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict_sentences(v: Verdict) -> list[str]:
    """Superior or not (and why), what alignment did, how the pick was chosen, the baseline."""
    label, rs, gain, acc, ece = point_label(v.pick), v.report_split, v.gain, v.acc, v.ece
    ci = (
        f"95% CI {_pts(gain.lo)} to {_pts(gain.hi)}"
        if not math.isnan(gain.lo)
        else "no per-item results, so no interval"
    )
    no_ece = any(math.isnan(x) for x in ece.values())
    if v.recovered is not None:
        rec = f"{100 * v.recovered:.0f}% of the lost calibration recovered"
    elif no_ece:
        rec = "calibration is not measured (the task scores with its own metric, no gold choice)"
    else:
        rec = (
            f"no calibration to recover (alignment did not raise ECE on {rs}: base"
            f" {ece['base']:.3f}, aligned {ece['aligned']:.3f})"
        )
    sentences: list[str] = []
    if v.is_superior:
        sentences.append(
            f"{label} is Pareto-superior: {_pts(gain.value)} points over the best parent "
            f"({v.best_parent}; {ci}), {rec}."
        )
    else:
        parent = v.pick_is_parent
        if parent is not None:
            why = f"the pick ({v.rule} on {v.select_split}) is the {parent} model itself"
        elif not v.has_items:
            why = (
                f"{label} is {_pts(gain.value)} points over the best parent ({v.best_parent})"
                f" but {ci}"
            )
        else:
            why = (
                f"{label} ({v.rule} on {v.select_split}) is {_pts(gain.value)} points against"
                f" the best parent ({v.best_parent}) and the {ci} does not exclude zero"
            )
        sentences.append(f"No λ is Pareto-superior on {rs}: {why}; {rec}.")
    if no_ece:
        sentences.append(
            f"Alignment moved accuracy from {_pct(acc['base'])} (base) to"
            f" {_pct(acc['aligned'])} (aligned) on {rs}; {label} has accuracy {_pct(acc['pick'])}."
        )
    else:
        sentences.append(
            f"Alignment moved accuracy from {_pct(acc['base'])} (base) to {_pct(acc['aligned'])} "
            f"(aligned) and ECE from {ece['base']:.3f} to {ece['aligned']:.3f} on {rs}; "
            f"{label} has accuracy {_pct(acc['pick'])} and ECE {ece['pick']:.3f}."
        )
    if v.chosen_on_report_split:
        sentences.append(
            f"There is no separate '{v.asked_split}' split, so {label} was chosen on {rs}, the same "
            "data it is reported on: these numbers are optimistic (selection bias)."
        )
    else:
        sentences.append(
            f"{label} was chosen by rule '{v.rule}' on {v.select_split} and is reported on {rs}."
        )
    ts = temperature_sentence(v)
    if ts:
        sentences.append(ts)
    return sentences


def temperature_sentence(v: Verdict) -> str | None:
    """Compare the pick with the post-hoc baseline: the aligned model, temperature-scaled."""
    ts = v.temperature_scaled
    if not ts or "ece" not in ts:
        return None
    label, split = point_label(v.pick), v.report_split
    acc_pick, ece_pick = v.acc["pick"], v.ece["pick"]
    ts_ece = ts["ece"].value
    ts_acc = ts["acc"].value if "acc" in ts else float("nan")
    acc_txt = f" at accuracy {_pct(ts_acc)}" if not math.isnan(ts_acc) else ""
    head = (
        f"Temperature scaling of the aligned model (fitted on dev) reaches ECE {ts_ece:.3f}"
        f"{acc_txt} on {split}"
    )
    if ece_pick <= ts_ece:
        cal = f"{label} is better calibrated (ECE {ece_pick:.3f})"
    else:
        cal = f"{label} is less well calibrated (ECE {ece_pick:.3f})"
    if not math.isnan(ts_acc):
        diff = acc_pick - ts_acc
        if diff == 0:
            cal += " at equal accuracy"
        else:
            cal += f" and {abs(100 * diff):.1f} points {'more' if diff > 0 else 'less'} accurate"
    return f"{head}; {cal} — temperature scaling cannot change which answer is chosen."


def data_meta(cfg: Any) -> dict[str, str]:
    """The report's lines saying what was scored: the test and dev data, or each task's."""
    if not cfg.multi_task:  # one task, given as a reference or as a one-entry list
        task = cfg.tasks()[0]
        return {"test data": task.data, "dev data": task.dev or "none (pick chosen on test)"}
    out = {
        f"task {t.name or i + 1}": t.data + (f" (dev: {t.dev})" if t.dev else "")
        + f" · {t.mode} · {t.prompt_format}" + (f" · {t.fewshot}-shot" if t.fewshot else "")
        for i, t in enumerate(cfg.tasks())
    }
    kind = (
        "the mean of the tasks' accuracies" if cfg.aggregate == "macro"
        else "the tasks' accuracies weighted by their item counts"
    )
    out["aggregate"] = (
        f"{cfg.aggregate}: acc is {kind}; calibration is pooled over the items of the tasks"
        " with a gold choice"
    )
    return out


def task_verdict_sentence(task: str, v: Verdict) -> str:
    """One line per task of a multi-task sweep: its own best λ and whether it is superior."""
    label = point_label(v.pick)
    if math.isnan(v.gain.lo):
        ci = "no interval"
    else:
        ci = f"95% CI {_pts(v.gain.lo)} to {_pts(v.gain.hi)}"
    state = "Pareto-superior" if v.is_superior else "not Pareto-superior"
    parent = v.pick_is_parent
    which = f"the {parent} model" if parent else label
    return (
        f"{task}: own pick {which} ({v.rule} on {v.select_split}), {state} on {v.report_split}"
        f" ({_pts(v.gain.value)} points over the best parent, {v.best_parent}; {ci})."
    )


def generation_settings(cfg: Any) -> str:
    """One line saying how every point's samples were drawn (the same for every λ)."""
    stops = ", ".join(map(str, cfg.stop_token_ids)) if cfg.stop_token_ids else "the model's EOS"
    return (
        f"{cfg.samples} samples per prompt · temperature {cfg.temperature:g} · top-p"
        f" {cfg.top_p:g} · at most {cfg.max_new_tokens} new tokens · stop at token ids {stops}"
        f" · seed {cfg.seed}"
    )


def simplex_sentences(v: Any) -> list[str]:
    """A simplex sweep's verdict (`analysis.simplex.SimplexVerdict`) in sentences: superior to
    every parent or not, better than every edge's best λ or not, calibration, how chosen."""
    rs, gain, parent = v.report_split, v.gain, v.pick_is_parent
    label = point_label(v.pick) if parent is None else f"{parent} ({point_label(v.pick)})"

    def ci(m: Any) -> str:
        if math.isnan(m.lo):
            return "no per-item results, so no interval"
        return f"95% CI {_pts(m.lo)} to {_pts(m.hi)}"

    parents = ", ".join(f"{s.name} {_pct(s.acc)}" for s in v.parents)
    out: list[str] = []
    if v.is_superior:
        out.append(
            f"{label} is Pareto-superior to all {len(v.parents)} parents on {rs}:"
            f" {_pts(gain.value)} points over the best ({v.best_parent}; {ci(gain)})."
        )
    elif parent is not None:
        out.append(
            f"No point is Pareto-superior on {rs}: the pick ({v.rule} on {v.select_split}) is"
            f" the {parent} model itself."
        )
    else:
        out.append(
            f"No point is Pareto-superior on {rs}: {label} ({v.rule} on {v.select_split}) is"
            f" {_pts(gain.value)} points against the best parent ({v.best_parent}) and the"
            f" {ci(gain)} does not exclude zero."
        )
    out.append(
        f"Accuracy on {rs}: {parents}; {label} {_pct(v.acc)}"
        + ("" if math.isnan(v.ece) else f" (ECE {v.ece:.3f})") + "."
    )
    if v.best_edge is not None:
        edge = v.best_edge
        where = (
            "an interior point (it mixes more models than any edge)" if v.interior
            else "on an edge itself, so the simplex's interior bought nothing over a scalar λ"
        )
        verdict = (
            f"better than every edge's best point ({_pts(v.edge_gain.value)} points over"
            f" {point_label(edge.point)} on {edge.name}; {ci(v.edge_gain)})"
            if v.beats_edges else
            f"not shown better than the best edge point ({point_label(edge.point)} on"
            f" {edge.name}, {_pct(edge.acc)}: {_pts(v.edge_gain.value)} points, {ci(v.edge_gain)})"
        ) if v.interior else (
            f"of the edges' own picks the most accurate on {rs} is {point_label(edge.point)}"
            f" on {edge.name} ({_pct(edge.acc)})"
        )
        out.append(f"The pick is {where}; it is {verdict}." if v.interior
                   else f"The pick is {where}; {verdict}.")
    if v.recovered is not None:
        first, last = v.parents[0], v.parents[-1]
        out.append(
            f"It recovers {100 * v.recovered:.0f}% of the ECE rise from {first.name}"
            f" ({first.ece:.3f}) to {last.name} ({last.ece:.3f})."
        )
    if v.chosen_on_report_split:
        out.append(
            f"There is no separate dev split, so {label} was chosen on {rs}, the same data it is"
            " reported on: these numbers are optimistic (selection bias)."
        )
    else:
        how = (f"by rule '{v.rule}'" if v.rule == v.edge_rule
               else f"by rule '{v.rule}', every edge's best point by '{v.edge_rule}',")
        out.append(
            f"{label} and every edge's best point were chosen {how} on {v.select_split}; all"
            f" numbers are on {rs}."
        )
    return out
