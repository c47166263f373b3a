"""Bad inputs of the device settings: batch sizes, memory caps, dispatch and parent placement
that cannot mean anything — refused before a model loads or a store is created."""

from __future__ import annotations

from bad_inputs.cases import GOOD, Case, eval_argv, items_file, sweep_argv


def _items(tmp):
    return items_file(tmp, [GOOD, {**GOOD, "id": "b"}])


def batch_not_a_number(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--batch-size", "lots")


def batch_zero(tmp, pair):
    return eval_argv(pair[1], _items(tmp), "--batch-size", "0")


def max_memory_without_size(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--device-map", "auto", "--max-memory", "cpu")


def max_memory_unknown_device(tmp, pair):
    return eval_argv(pair[1], _items(tmp), "--device-map", "auto", "--max-memory", "gpu0=4GiB")


def max_memory_without_map(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--max-memory", "cpu=4GiB")


def device_map_typo(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--device-map", "autp")


def parents_typo(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--parents", "gpu")


def dtype_typo(tmp, pair):
    return sweep_argv(pair, _items(tmp), "--dtype", "bf16")


CASES = [
    Case("batch-size-text", "--batch-size that is neither auto nor a number", batch_not_a_number, "--batch-size 'lots': not a number"),
    Case("batch-size-zero", "--batch-size 0", batch_zero, "'batch_size': 0: use auto or a whole number from 1 to 65536"),
    Case("max-memory-no-size", "--max-memory naming a device without a size", max_memory_without_size, "--max-memory 'cpu': expected DEVICE=SIZE"),
    Case("max-memory-device", "--max-memory with a device accelerate does not know", max_memory_unknown_device, "--max-memory 'gpu0=4GiB'"),
    Case("max-memory-no-map", "--max-memory without --device-map (accelerate would ignore it)", max_memory_without_map, "--max-memory caps a dispatch: pass --device-map auto too"),
    Case("device-map-typo", "--device-map autp", device_map_typo, "device_map"),
    Case("parents-typo", "--parents gpu (auto, resident or streamed)", parents_typo, "parents"),
    Case("dtype-typo", "--dtype bf16 (the name is bfloat16)", dtype_typo, "dtype"),
]
