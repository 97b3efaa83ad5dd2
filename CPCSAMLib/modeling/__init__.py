"""Network modules: LoRA, backbones, class prompt encoder, class mask decoder, dual-branch SAM."""
