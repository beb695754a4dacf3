"""Text-encoder LoRA through peft's own API: injected, trained, dropped and injected again."""

import torch

from trainer.lora.network import ADAPTER, TEXT_ENCODER_TARGETS, add_text_encoder_lora, drop_adapter
from trainer.models.loader import load_model


def encode(encoder, ids):
    with torch.no_grad():
        return encoder(ids).last_hidden_state


def test_inject_train_drop_and_inject_again(tiny_models):
    encoder = load_model(tiny_models("sd15")).pipe.text_encoder
    ids = torch.randint(0, 100, (2, 77))
    plain = encode(encoder, ids)
    layers = encoder.config.num_hidden_layers

    params = add_text_encoder_lora(encoder, rank=4, alpha=2)
    assert len(params) == 2 * len(TEXT_ENCODER_TARGETS) * layers  # lora_A + lora_B per linear
    assert list(encoder.peft_config) == [ADAPTER]
    torch.testing.assert_close(encode(encoder, ids), plain)  # lora_B starts at zero
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    assert (encode(encoder, ids) - plain).abs().max() > 1e-3

    again = add_text_encoder_lora(encoder, rank=2, alpha=1)  # a second run on the same model starts fresh
    assert len(again) == len(params) and all(p.shape[0] == 2 or p.shape[1] == 2 for p in again)
    torch.testing.assert_close(encode(encoder, ids), plain)

    drop_adapter(encoder, ADAPTER)
    assert ADAPTER not in getattr(encoder, "peft_config", {})
    assert not [n for n, _ in encoder.named_parameters() if f".{ADAPTER}." in n]
    torch.testing.assert_close(encode(encoder, ids), plain)
