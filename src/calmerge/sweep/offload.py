"""Writable storage for the parameters accelerate offloaded, so a sweep can rewrite them.

Why: a model loaded with `device_map="auto"` that does not fit its devices keeps some
parameters on the `meta` device; accelerate's `AlignDevicesHook` loads their values from a
weights map before each forward. transformers points that map at the *checkpoint's own
safetensors files* (read through `safe_open`), so writing a merged weight there would overwrite
the user's model. `OffloadScratch` adopts each such map once: every offloaded value is copied
into a memory-mapped file of ours (accelerate's `.dat` layout: raw values, bfloat16 as int16),
the map is pointed at those files, and each parameter gets a CPU tensor over its file that the
merge writes into. The checkpoint files are never opened for writing; the scratch folder is
removed by `close`.

Only the dispatch accelerate builds (`hf_device_map`, `_hf_hook.weights_map` a
`PrefixedDataset` over an `OffloadedWeightsLoader`) is adopted; another kind of map is refused
in one line rather than guessed at.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from calmerge.errors import CheckpointError


def offloaded_loaders(model: Any) -> dict[str, Any]:
    """{live parameter name: the weights map (loader) holding it} for every meta parameter."""
    meta = {n for n, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"}
    if not meta:
        return {}
    out: dict[str, Any] = {}
    for module_name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            wmap = getattr(h, "weights_map", None)
            if wmap is None or not getattr(h, "offload", False):
                continue
            loader = getattr(wmap, "dataset", wmap)
            prefix = f"{module_name}." if module_name else ""
            for local, _ in module.named_parameters(recurse=bool(h.place_submodules)):
                name = prefix + local
                if name in meta:
                    out[name] = loader
    missing = sorted(meta - set(out))
    if missing:
        raise CheckpointError(
            f"parameter '{missing[0]}' is on the meta device without an accelerate offload hook",
            "load the model fully (no --device-map), or with accelerate's device_map='auto'",
        )
    return out


class OffloadScratch:
    """Our own memory-mapped copies of a dispatched model's offloaded parameters (see module).

    `view(name)` is a writable CPU tensor over parameter `name`'s values; writing it changes
    what the next forward loads.
    """

    def __init__(self, model: Any, root: str | Path | None = None) -> None:
        self.loaders = offloaded_loaders(model)
        self.folder = Path(tempfile.mkdtemp(prefix="calmerge-offload-", dir=root))
        self._views: dict[str, Any] = {}
        self._maps: list[Any] = []  # the np.memmaps the views share storage with
        adopted: set[int] = set()
        try:
            for loader in self.loaders.values():
                if id(loader) not in adopted:
                    self._adopt(loader)
                    adopted.add(id(loader))
        except Exception:
            self.close()
            raise

    def _adopt(self, loader: Any) -> None:
        """Copy every value of `loader` into scratch files and point the loader at them."""
        import numpy as np
        import torch

        if not hasattr(loader, "index") or not hasattr(loader, "state_dict"):
            raise CheckpointError(
                f"offloaded weights kept in a {type(loader).__name__}, which calmerge cannot"
                " rewrite in place",
                "load with accelerate's device_map='auto' (an OffloadedWeightsLoader)",
            )
        index: dict[str, dict] = {}
        for key in list(loader):
            value = loader[key].detach().to("cpu").contiguous()
            raw = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
            dtype = "bfloat16" if value.dtype == torch.bfloat16 else str(raw.numpy().dtype)
            shape = tuple(value.shape) or (1,)  # accelerate stores 0-d values as 1-d
            mm = np.memmap(self.folder / f"{key}.dat", dtype=raw.numpy().dtype, mode="w+",
                           shape=shape)
            mm[:] = raw.reshape(shape).numpy()
            mm.flush()
            view = torch.from_numpy(mm)
            if value.dtype == torch.bfloat16:
                view = view.view(torch.bfloat16)
            self._maps.append(mm)
            self._views[key] = view.reshape(value.shape)
            index[key] = {"dtype": dtype, "shape": list(value.shape)}
        loader.state_dict.clear()
        loader.index = index
        loader.save_folder = str(self.folder)

    def view(self, name: str) -> Any:
        """The writable CPU tensor over parameter `name`'s offloaded values."""
        return self._views[name]

    def close(self) -> None:
        """Drop the maps and remove the scratch folder (the model's offloaded values go too)."""
        self._views.clear()
        self._maps.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
