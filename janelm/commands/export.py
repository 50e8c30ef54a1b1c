"""`janelm export`: write a checkpoint as a transformers model folder (`janelm.interop`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from janelm.checkpoint import check_checkpoint_file, resolve_checkpoint
    from janelm.interop.folder import check_export_target

    out = Path(args.out)
    # A taken OUT or a bad -c fails at once, before torch is imported and the model loaded.
    check_export_target(out, args.force)
    check_checkpoint_file(resolve_checkpoint(args.checkpoint))

    import torch

    from janelm.checkpoint import load_model
    from janelm.console import note
    from janelm.interop.architectures import architecture_for
    from janelm.interop.folder import write_folder
    from janelm.interop.model_card import card_sample, model_card

    model, tokenizer, ckpt = load_model(args.checkpoint, "cpu", torch.float32)
    arch = architecture_for(model.config)  # a model with no transformers equivalent is refused here
    sample, settings = card_sample(model, tokenizer)
    card = model_card(ckpt, model.config, arch.name, tokenizer.kind, model.num_params(), sample, settings, out.name)
    write_folder(out, model.config, model.state_dict(), tokenizer, card, args.force)
    note(f"wrote {out}/ as a transformers {arch.name}: AutoModelForCausalLM.from_pretrained({str(out)!r}), "
         f"or `janelm sample -c {out}`")
    return 0
