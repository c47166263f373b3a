"""Bad inputs that would write a model that is not finite: refused before the output exists."""

from __future__ import annotations

from bad_inputs.cases import OUT, Case, copy_model, edit_weights


def _lam(pair, lam: str, *extra: str) -> list[str]:
    return ["merge", "--base", str(pair[0]), "--aligned", str(pair[1]), "--lam", lam, "-o", OUT,
            *extra]


def lam_cancels(tmp, pair):
    return _lam(pair, "1e38")  # 1−λ and λ cancel in float32: the weights sum to 0


def fp16_output_overflows(tmp, pair):
    """An aligned model with a (finite) weight of 1e5: fine in fp32, beyond fp16's 65504."""
    big = edit_weights(copy_model(pair[1], tmp / "big"),
                       lambda t: t["model.norm.weight"].mul_(1e5))
    return _lam((pair[0], big), "1", "--out-dtype", "float16")


def torch_path_overflows(tmp, pair):
    return _lam(pair, "1e300", "--method", "task_arithmetic")  # the torch path, not the kernel


def weights_sum_to_zero(tmp, pair):
    y = tmp / "zero.yml"
    y.write_text(
        f"merge_method: linear\nmodels:\n  - model: {pair[1]}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {pair[0]}\n    parameters: {{weight: -1.0}}\n"
    )
    return ["merge", str(y), "-o", OUT]


CASES = [
    Case("lam-cancels", "λ so large that 1−λ and λ cancel (division by 0)", lam_cancels, "sum to 0 in float32"),
    Case("fp16-output-overflow", "Merged values beyond the float16 output range", fp16_output_overflows, "float16 output"),
    Case("torch-path-overflow", "An overflowing task-arithmetic merge (torch path)", torch_path_overflows, "would hold Inf/NaN"),
    Case("weights-sum-to-zero", "Linear weights summing to 0 under normalisation", weights_sum_to_zero, "sum to 0"),
]
