"""Component configs of the tiny models: the real architectures' classes, shrunk.

Shapes follow the real families where it matters for the code paths (SDXL's text_time
conditioning and two text encoders, Kolors' text_proj from ChatGLM, an 8x VAE), with widths
small enough that a training step takes well under a second on a laptop CPU.
"""

CLIP_HIDDEN = 32
CHATGLM_HIDDEN = 16
TIME_DIM = 8

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    norm_num_groups=4,  # pairs of channels per group: vae_weights makes the VAE reconstruct with them
    latent_channels=4,
    sample_size=64,
)

_UNET_COMMON = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[32, 64],
    norm_num_groups=16,
)

UNET_SD15 = dict(
    _UNET_COMMON,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=CLIP_HIDDEN,
    attention_head_dim=8,
)

UNET_SDXL = dict(
    _UNET_COMMON,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    transformer_layers_per_block=[1, 2],
    cross_attention_dim=2 * CLIP_HIDDEN,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + CLIP_HIDDEN,
)

UNET_KOLORS = dict(
    UNET_SDXL,
    encoder_hid_dim=CHATGLM_HIDDEN,
    encoder_hid_dim_type="text_proj",
    projection_class_embeddings_input_dim=6 * TIME_DIM + CHATGLM_HIDDEN,
)


def clip_text(vocab_size: int, projection: bool = False) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=CLIP_HIDDEN,
        hidden_act="gelu" if projection else "quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def chatglm(vocab_size: int) -> dict:
    return dict(
        num_layers=2,
        hidden_size=CHATGLM_HIDDEN,
        ffn_hidden_size=16,
        kv_channels=4,
        num_attention_heads=2,
        seq_length=256,
        multi_query_attention=True,
        multi_query_group_num=2,
        add_qkv_bias=True,
        original_rope=True,
        padded_vocab_size=vocab_size + 8,
        torch_dtype="float32",
    )
