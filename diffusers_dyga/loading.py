"""Strict loading for the package's models: a checkpoint that lacks a weight or buffer, or holds one the model does not
have, is an error instead of a log line about newly initialised weights; pickle files load only when asked."""

import os


class StrictLoadingMixin:
    """Put before `ModelMixin` in a model's bases. `from_pretrained` raises `ValueError` naming the missing, unexpected
    or mismatched keys, and defaults to `use_safetensors=True` (pass `use_safetensors=False` for `.bin` files)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        if kwargs.get("use_safetensors") is None:
            kwargs["use_safetensors"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = [
            f"{kind.replace('_', ' ')}: {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
            if (keys := info.get(kind))
        ]
        if problems:
            where = os.path.join(str(pretrained_model_name_or_path), *filter(None, [kwargs.get("subfolder")]))
            raise ValueError(f"The {cls.__name__} checkpoint in {where} does not match the model ({'; '.join(problems)}).")
        return (model, info) if wants_info else model
